import CLibFuzzer
import Foundation

/// One fuzz input: libFuzzer's bytes, valid only during the call.
public typealias FuzzFunction = @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt

/// The bytes of one input as an array (libFuzzer passes a null pointer for the empty input).
public func inputBytes(_ data: UnsafePointer<UInt8>?, _ size: Int) -> [UInt8] {
    size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
}

/// The common `main` of every target:
/// - `--write-seeds DIR` writes the target's seed inputs (`seeds()`, file name -> bytes) into
///   DIR and, with `--dict FILE`, its libFuzzer dictionary (`dictionary()`), then exits;
/// - otherwise runs `setUp` once (it may exit non-zero, e.g. when a model file is missing),
///   then libFuzzer's driver with this process's arguments and `body` as the fuzz target.
public func fuzzMain(seeds: () -> [(String, [UInt8])], dictionary: () -> [[UInt8]] = { [] },
                     setUp: () -> Void = {}, body: FuzzFunction) -> Never {
    let args = CommandLine.arguments
    if args.count >= 3 && args[1] == "--write-seeds" {
        writeSeeds(seeds, dictionary, to: args[2], dictionaryPath: args.count >= 5 && args[3] == "--dict" ? args[4] : nil)
        exit(0)
    }
    setUp()
    var argc = CommandLine.argc
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, body))
}

/// A function of its own, so that everything it allocates is freed before `exit` (LeakSanitizer).
@inline(never)
private func writeSeeds(_ seeds: () -> [(String, [UInt8])], _ dictionary: () -> [[UInt8]], to dir: String,
                        dictionaryPath: String?) {
    do {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for (name, bytes) in seeds() {
            try Data(bytes).write(to: URL(fileURLWithPath: dir).appendingPathComponent(name))
        }
        if let dictionaryPath {
            let lines = dictionary().map { "\"" + $0.map(dictionaryEscape).joined() + "\"\n" }
            try Data(lines.joined().utf8).write(to: URL(fileURLWithPath: dictionaryPath))
        }
    } catch {
        fail("cannot write seeds to \(dir): \(error)")
    }
}

/// libFuzzer dictionary syntax: printable ASCII as is (but `"` and `\`), the rest as `\xNN`.
private func dictionaryEscape(_ b: UInt8) -> String {
    if b >= 0x20 && b < 0x7F && b != UInt8(ascii: "\"") && b != UInt8(ascii: "\\") {
        return String(UnicodeScalar(b))
    }
    let hex = String(b, radix: 16, uppercase: true)
    return "\\x" + (hex.count == 1 ? "0" + hex : hex)
}

/// Prints to stderr and exits 1 (setup errors: not a finding of the fuzzer).
public func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data(("error: " + message + "\n").utf8))
    exit(1)
}

/// A property of the code under test does not hold: report and trap, so libFuzzer records
/// the input as a crash.
public func violated(_ message: @autoclosure () -> String, input: [UInt8]) -> Never {
    let shown = input.prefix(256).map { String($0, radix: 16) }.joined(separator: " ")
    FileHandle.standardError.write(Data(("PROPERTY VIOLATED: \(message())\ninput (\(input.count) bytes, hex): \(shown)\n").utf8))
    fatalError("property violated")
}

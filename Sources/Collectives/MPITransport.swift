import CMPI
import Foundation
import Partitioning

/// Failures of the MPI transport outside a collective (start-up, control messages).
public enum MPIError: Error, Equatable, CustomStringConvertible {
    /// This build has no MPI (the manifest found no mpi.h).
    case unavailable(String)
    /// MPI reported an error.
    case failed(String)
    /// A peer did not arrive within the timeout.
    case timeout(String)
    /// The launch does not match the mesh (rank count ≠ device count).
    case badLaunch(String)

    public var description: String {
        switch self {
        case let .unavailable(m): "MPI unavailable: \(m)"
        case let .failed(m): "MPI error: \(m)"
        case let .timeout(m): "MPI timeout: \(m)"
        case let .badLaunch(m): "bad MPI launch: \(m)"
        }
    }
}

private func check(_ code: Int32) throws(MPIError) {
    switch Int(code) {
    case MI_OK: return
    case MI_TIMEOUT: throw .timeout(String(cString: mi_last_error()))
    case MI_UNAVAILABLE: throw .unavailable(String(cString: mi_last_error()))
    default: throw .failed(String(cString: mi_last_error()))
    }
}

/// This process's place in an MPI job (`MPI_COMM_WORLD`), and the control plane rank 0 uses to
/// tell the other ranks what to run next. One per process: `MPIWorld.start()` initialises MPI
/// once and returns the same object afterwards.
public final class MPIWorld: MeshControl, @unchecked Sendable {
    public let rank: Int
    public let size: Int
    /// Seconds a control-plane exchange waits for peers before failing (≤ 0: forever).
    public let timeout: Double

    nonisolated(unsafe) private static var shared: MPIWorld?
    private static let lock = NSLock()

    private init(rank: Int, size: Int, timeout: Double) {
        self.rank = rank
        self.size = size
        self.timeout = timeout
    }

    /// The world, once `start()` has run.
    public static var current: MPIWorld? { lock.withLock { shared } }

    /// Ranks of this job on this host (Open MPI's local size), to share the cores among them.
    public static var ranksOnThisHost: Int {
        ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_LOCAL_SIZE"].flatMap { Int($0) } ?? 1
    }

    /// Whether this binary was built with MPI.
    public static var isCompiledWithMPI: Bool { mi_compiled_with_mpi() == 1 }

    /// The world size the launcher announced in the environment, if any (before `MPI_Init`).
    public static var launchedSize: Int? {
        let env = ProcessInfo.processInfo.environment
        return (env["OMPI_COMM_WORLD_SIZE"] ?? env["PMI_SIZE"]).flatMap { Int($0) }
    }

    /// Initialises MPI (once per process).
    public static func start(timeout: Double = 30) throws(MPIError) -> MPIWorld {
        lock.lock()
        defer { lock.unlock() }
        if let world = shared { return world }
        var rank: Int32 = 0, size: Int32 = 0
        try check(mi_init(&rank, &size))
        let world = MPIWorld(rank: Int(rank), size: Int(size), timeout: timeout)
        shared = world
        return world
    }

    /// The MPI library's own version string.
    public var libraryVersion: String { String(cString: mi_library_version()) }

    /// This rank's host name.
    public var processorName: String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard mi_processor_name(&buffer, Int32(buffer.count)) == 0 else { return "?" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Ends MPI cleanly (every rank must call it).
    public func finalize() { _ = mi_finalize() }

    /// Kills the whole job through the launcher (`MPI_Abort`); use when this rank cannot go on.
    public func abort(code: Int32 = 1) { mi_abort(code) }

    /// `root`'s bytes, delivered to every rank (the others pass anything, e.g. []).
    /// `timeout` ≤ 0 waits forever (followers waiting for the next command).
    public func broadcast(_ message: [UInt8], root: Int = 0, timeout: Double? = nil) throws(MPIError) -> [UInt8] {
        let wait = timeout ?? self.timeout
        // Checked before anything is sent, so followers never wait for a payload that cannot come.
        if rank == root, message.count > Int(Int32.max) { throw .failed("control message of \(message.count) bytes is too large") }
        var length = Int64(rank == root ? message.count : 0)
        try check(mi_bcast(0, &length, 8, Int32(root), wait))
        var buffer = rank == root ? message : [UInt8](repeating: 0, count: Int(length))
        if length > 0 {
            try check(buffer.withUnsafeMutableBytes { mi_bcast(0, $0.baseAddress, Int(length), Int32(root), wait) })
        }
        return buffer
    }

    /// Every rank's bytes, in rank order, on every rank.
    public func allGather(_ message: [UInt8], timeout: Double? = nil) throws(MPIError) -> [[UInt8]] {
        let wait = timeout ?? self.timeout
        var mine = Int64(message.count)
        var lengths = [Int64](repeating: 0, count: size)
        try check(lengths.withUnsafeMutableBytes { mi_allgather(0, &mine, 8, $0.baseAddress, wait) })
        guard lengths.reduce(0, +) <= Int64(Int32.max) else { throw .failed("control messages of \(lengths.reduce(0, +)) bytes are too large") }
        let counts = lengths.map { Int32($0) }
        var displacements = [Int32](repeating: 0, count: size)
        for i in 1..<max(1, size) { displacements[i] = displacements[i - 1] + counts[i - 1] }
        var all = [UInt8](repeating: 0, count: Int(lengths.reduce(0, +)))
        try check(message.withUnsafeBytes { send in
            all.withUnsafeMutableBytes { recv in
                mi_allgatherv(0, send.baseAddress, message.count, recv.baseAddress, counts, displacements, wait)
            }
        })
        return (0..<size).map { Array(all[Int(displacements[$0])..<Int(displacements[$0] + counts[$0])]) }
    }

    public func barrier(timeout: Double? = nil) throws(MPIError) { try check(mi_barrier(0, timeout ?? self.timeout)) }

    /// Sub-communicators of each mesh, made once: every session of a long command (`bench`
    /// over several formats) reuses them instead of splitting anew.
    private var groupsByMesh: [Mesh: [(handle: Int32, size: Int, index: Int)]] = [:]
    private let groupsLock = NSLock()

    /// Per axis subset (by rawValue): (shim handle, group size K, this rank's index in it).
    /// The first call for a mesh splits the world (`MPI_Comm_split`, collective over every rank).
    func groups(for mesh: Mesh) throws(MPIError) -> [(handle: Int32, size: Int, index: Int)] {
        groupsLock.lock()
        defer { groupsLock.unlock() }
        if let cached = groupsByMesh[mesh] { return cached }
        var groups: [(handle: Int32, size: Int, index: Int)] = []
        for axes in AxisSet.allSubsets {
            let members = mesh.group(of: rank, over: axes)
            let index = mesh.index(of: rank, within: axes)
            var handle: Int32 = 0
            try check(mi_split(Int32(members.min()!), Int32(index), &handle))
            groups.append((handle, members.count, index))
        }
        groupsByMesh[mesh] = groups
        return groups
    }
}

/// The MPI transport: one device per rank, each collective an MPI operation on the
/// sub-communicator of its axis set (`MPI_Comm_split` by the group's members).
///
/// Same protocol and results as `LocalFabric` (see `Communicator`): all-gather is
/// `MPI_Allgather`; all-to-all is `MPI_Alltoall`; reduce-scatter is the direct algorithm — an
/// all-to-all of the K chunks, then each member sums the chunk it owns in member order 0..<K;
/// all-reduce is that reduce-scatter followed by an all-gather (the input padded to a multiple
/// of K). Summing in member order makes results bitwise equal to the in-process transport, and
/// the bytes moved are exactly the direct-algorithm counts both transports report.
/// Members must pass equal counts (as with `MPI_Allgather`; not re-checked on the wire).
public final class MPICommunicator: Communicator, @unchecked Sendable {
    public let mesh: Mesh
    public let rank: Int
    public let world: MPIWorld
    /// Seconds a collective waits for its peers before throwing `.timeout`.
    public let timeout: Double
    /// Per axis subset (by rawValue): (shim handle, group size K, my index in the group).
    private let groups: [(handle: Int32, size: Int, index: Int)]
    private let recorder = TrafficRecorder()

    /// Uses the world's sub-communicators for the mesh (made on first use: every rank must call).
    public init(world: MPIWorld, mesh: Mesh, timeout: Double = 30) throws(MPIError) {
        guard world.size == mesh.deviceCount else {
            throw .badLaunch("the mesh \(mesh) has \(mesh.deviceCount) devices but MPI started \(world.size) ranks; "
                + "run mpirun -np \(mesh.deviceCount)")
        }
        self.mesh = mesh
        self.rank = world.rank
        self.world = world
        self.timeout = timeout
        groups = try world.groups(for: mesh)
    }

    public var traffic: TrafficCounter { recorder.traffic }
    public func resetTraffic() { recorder.reset() }

    /// Every rank must stop: prints the reason and kills the job through the launcher.
    public func abort(reason: String) {
        FileHandle.standardError.write(Data("meshinfer rank \(rank): aborting the MPI job: \(reason)\n".utf8))
        world.abort(code: 1)
    }

    private func run(_ kind: CollectiveKind, _ code: () -> Int32) throws(CollectiveError) {
        switch Int(code()) {
        case MI_OK: return
        case MI_TIMEOUT: throw .timeout(seconds: timeout)
        default: throw .aborted(reason: "\(kind.rawValue) failed: \(String(cString: mi_last_error()))")
        }
    }

    private func group(_ axes: AxisSet) -> (handle: Int32, size: Int, index: Int) { groups[axes.rawValue & 7] }

    private func gather(_ data: [Float], _ g: (handle: Int32, size: Int, index: Int), _ kind: CollectiveKind) throws(CollectiveError) -> [Float] {
        var out = [Float](repeating: 0, count: data.count * g.size)
        try run(kind) {
            data.withUnsafeBytes { s in out.withUnsafeMutableBytes { r in mi_allgather(g.handle, s.baseAddress, s.count, r.baseAddress, timeout) } }
        }
        return out
    }

    private func exchange(_ data: [Float], _ g: (handle: Int32, size: Int, index: Int), _ kind: CollectiveKind) throws(CollectiveError) -> [Float] {
        if data.count % g.size != 0 { throw .indivisible(kind: kind, count: data.count, parts: g.size) }
        var out = [Float](repeating: 0, count: data.count)
        try run(kind) {
            data.withUnsafeBytes { s in
                out.withUnsafeMutableBytes { r in mi_alltoall(g.handle, s.baseAddress, s.count / g.size, r.baseAddress, timeout) }
            }
        }
        return out
    }

    /// Sums the K received chunks in member order (the reduce-scatter step).
    private func sumChunks(_ received: [Float], k: Int) -> [Float] {
        let chunk = received.count / k
        return sumInOrder((0..<k).map { Array(received[($0 * chunk)..<(($0 + 1) * chunk)]) }, from: 0, count: chunk)
    }

    public func allGather(_ data: [Float], over axes: AxisSet, site: CollectiveSite) throws(CollectiveError) -> [Float] {
        let g = group(axes)
        let out = g.size == 1 ? data : try gather(data, g, .allGather)
        recorder.record(.allGather, axes, site, count: data.count, groupSize: g.size)
        return out
    }

    public func reduceScatter(_ data: [Float], over axes: AxisSet, site: CollectiveSite) throws(CollectiveError) -> [Float] {
        let g = group(axes)
        if g.size > 1, data.count % g.size != 0 { throw .indivisible(kind: .reduceScatter, count: data.count, parts: g.size) }
        let out = g.size == 1 ? data : sumChunks(try exchange(data, g, .reduceScatter), k: g.size)
        recorder.record(.reduceScatter, axes, site, count: data.count, groupSize: g.size)
        return out
    }

    public func allReduce(_ data: [Float], over axes: AxisSet, site: CollectiveSite) throws(CollectiveError) -> [Float] {
        let g = group(axes)
        var out = data
        if g.size > 1 {
            let padded = (data.count + g.size - 1) / g.size * g.size
            let input = padded == data.count ? data : data + [Float](repeating: 0, count: padded - data.count)
            out = Array(try gather(sumChunks(try exchange(input, g, .allReduce), k: g.size), g, .allReduce)[..<data.count])
        }
        recorder.record(.allReduce, axes, site, count: data.count, groupSize: g.size)
        return out
    }

    public func allToAll(_ data: [Float], over axes: AxisSet, site: CollectiveSite) throws(CollectiveError) -> [Float] {
        let g = group(axes)
        let out = g.size == 1 ? data : try exchange(data, g, .allToAll)
        recorder.record(.allToAll, axes, site, count: data.count, groupSize: g.size)
        return out
    }
}

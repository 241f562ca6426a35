/// A mesh axis (Pope et al. §1: the physical torus axes x, y, z).
public enum Axis: Int, CaseIterable, Sendable, Codable, CustomStringConvertible {
    case x, y, z
    public var description: String { ["x", "y", "z"][rawValue] }
}

/// A set of mesh axes, printed in paper order ("xyz", "yz", …; "" for none).
public struct AxisSet: OptionSet, Hashable, Sendable, CustomStringConvertible, Codable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public static let x = AxisSet(rawValue: 1)
    public static let y = AxisSet(rawValue: 2)
    public static let z = AxisSet(rawValue: 4)
    public static let xy: AxisSet = [.x, .y]
    public static let yz: AxisSet = [.y, .z]
    public static let xyz: AxisSet = [.x, .y, .z]
    public static let none: AxisSet = []

    public var axes: [Axis] { Axis.allCases.filter { contains(AxisSet(rawValue: 1 << $0.rawValue)) } }
    public var description: String { axes.map(\.description).joined() }
    /// Every subset of {x, y, z}, the empty set first.
    public static var allSubsets: [AxisSet] { (0..<8).map { AxisSet(rawValue: $0) } }
}

public enum MeshError: Error, Equatable, CustomStringConvertible {
    case malformed(String)
    case nonPositive(String)
    public var description: String {
        switch self {
        case let .malformed(s): "mesh '\(s)' is not of the form X, XxY or XxYxZ (e.g. 2x2x1)"
        case let .nonPositive(s): "mesh '\(s)': every axis size must be at least 1"
        }
    }
}

/// A logical X×Y×Z mesh of devices. Device ranks are row-major over (x, y, z):
/// rank = (i_x·Y + i_y)·Z + i_z.
public struct Mesh: Hashable, Sendable, Codable, CustomStringConvertible {
    public let x: Int
    public let y: Int
    public let z: Int

    public init(x: Int, y: Int = 1, z: Int = 1) {
        precondition(x >= 1 && y >= 1 && z >= 1, "mesh axes must be positive")
        self.x = x
        self.y = y
        self.z = z
    }

    /// Parses "2", "2x2" or "2x2x2" (a missing axis is 1).
    public init(parsing text: String) throws(MeshError) {
        let parts = text.lowercased().split(separator: "x", omittingEmptySubsequences: false).map { Int($0) }
        guard (1...3).contains(parts.count), parts.allSatisfy({ $0 != nil }) else { throw .malformed(text) }
        let v = parts.map { $0! } + Array(repeating: 1, count: 3 - parts.count)
        guard v.allSatisfy({ $0 >= 1 }) else { throw .nonPositive(text) }
        self.init(x: v[0], y: v[1], z: v[2])
    }

    public static let single = Mesh(x: 1)

    public var deviceCount: Int { x * y * z }
    public var description: String { "\(x)x\(y)x\(z)" }

    public func size(_ axis: Axis) -> Int { [x, y, z][axis.rawValue] }
    /// Number of devices along a set of axes (1 for the empty set).
    public func size(_ axes: AxisSet) -> Int { axes.axes.reduce(1) { $0 * size($1) } }

    /// (i_x, i_y, i_z) of a rank.
    public func coordinates(of rank: Int) -> [Int] {
        precondition(rank >= 0 && rank < deviceCount)
        return [rank / (y * z), (rank / z) % y, rank % z]
    }

    public func rank(of coordinates: [Int]) -> Int { (coordinates[0] * y + coordinates[1]) * z + coordinates[2] }

    /// A rank's position among the devices that differ from it only along `axes`,
    /// row-major over those axes in x, y, z order (for yz: i_y·Z + i_z).
    public func index(of rank: Int, within axes: AxisSet) -> Int {
        let c = coordinates(of: rank)
        return axes.axes.reduce(0) { $0 * size($1) + c[$1.rawValue] }
    }

    /// The ranks that differ from `rank` only along `axes`, ordered by `index(of:within:)`.
    public func group(of rank: Int, over axes: AxisSet) -> [Int] {
        let base = coordinates(of: rank)
        var members: [Int] = []
        func visit(_ i: Int, _ c: [Int]) {
            if i == axes.axes.count { members.append(self.rank(of: c)); return }
            let axis = axes.axes[i]
            for v in 0..<size(axis) {
                var next = c
                next[axis.rawValue] = v
                visit(i + 1, next)
            }
        }
        visit(0, base)
        return members
    }
}

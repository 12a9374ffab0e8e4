/// Linux flag values the C headers define as macros Swift does not import. They are the
/// kernel's ABI, so they never change.
public enum LinuxABI {
    public static let renameNoReplace: UInt32 = 1
    public static let renameExchange: UInt32 = 2
    public static let renameWhiteout: UInt32 = 4
    public static let fallocKeepSize: Int32 = 1
    public static let fallocPunchHole: Int32 = 2
    public static let xattrCreate: Int32 = 1
    public static let xattrReplace: Int32 = 2
    public static let seekData: Int32 = 3
    public static let seekHole: Int32 = 4
}

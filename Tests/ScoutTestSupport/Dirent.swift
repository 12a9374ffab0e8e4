#if canImport(Glibc)
public import Glibc
#endif

/// The name of an entry `readdir(3)` returned.
public func direntName(_ e: UnsafeMutablePointer<dirent>) -> String {
    withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
}

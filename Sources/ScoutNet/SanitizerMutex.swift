#if SCOUT_TSAN
import ScoutFormat

/// Thread-sanitizer builds lock with pthread mutexes the sanitizer can see (ScoutFormat's
/// `SanitizerMutex` says why); a declaration in this module shadows `Synchronization.Mutex`.
typealias Mutex<Value> = SanitizerMutex<Value>
#endif

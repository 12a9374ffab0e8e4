import ScoutFormat

/// This module's mutex sleeps instead of spinning and is visible to the thread sanitizer
/// (ScoutFormat's `BlockingMutex` says why); a declaration in this module shadows
/// `Synchronization.Mutex`.
typealias Mutex<Value> = BlockingMutex<Value>

import Dispatch
public import ScoutFormat
public import ScoutNet
import Synchronization

/// The open-inode map (the original's `omap`), asked by the server for any client: before a
/// client frees an inode whose last link is gone, every other client is asked whether it
/// holds the inode open or cached by its kernel. Each holder marks it unlinked as it answers,
/// so that its own last close frees it; the inode is freed now only if nobody holds it.
///
/// Clients in the server's process are asked directly (`local`); nodes are asked with a
/// notice each and answer with one. A node whose session ends before it answers holds
/// nothing any more (its locks are gone with it, so it must look the name up again, and
/// the name is gone). The question waits for every answer: a node that is reconnecting
/// answers when it is back, and a freed inode can never be taken back.
public final class OpenInodeMap: Sendable {
    final class Question: Sendable {
        let waiting: Mutex<Set<ClientID>>
        let held = Atomic<Bool>(false)
        let answered = DispatchSemaphore(value: 0)
        init(_ clients: Set<ClientID>) { waiting = Mutex(clients) }

        func answer(from client: ClientID, held h: Bool) {
            if h { held.store(true, ordering: .relaxed) }
            let done = waiting.withLock { w -> Bool in
                guard w.remove(client) != nil else { return false }
                return w.isEmpty
            }
            if done { answered.signal() }
        }
    }

    private struct State {
        var nextID: UInt64 = 1
        var open: [UInt64: Question] = [:]
    }
    private let state = Mutex(State())
    private let net = Mutex<NetServer?>(nil)
    /// Clients in the server's process: whether one other than the asker holds the inode.
    /// Behind a reference: a closure kept in a mutex grows a thunk at every read (`Callback`).
    private let local = Mutex<Callback<(UInt64, ClientID), Bool>?>(nil)

    public init() {}

    /// Where nodes are asked (set once the network server exists; nil again at its stop).
    public func setNetwork(_ server: NetServer?) {
        net.withLock { $0 = server }
    }

    /// How the clients in the server's own process are asked.
    public func setLocal(_ ask: @escaping @Sendable (_ ino: UInt64, _ asker: ClientID) -> Bool) {
        local.withLock { $0 = Callback { ask($0.0, $0.1) } }
    }

    /// Whether a client other than `asker` holds `ino`. Blocks until every node with a
    /// session has answered or its session ended; never call it on an event loop.
    public func heldElsewhere(_ ino: UInt64, by asker: ClientID) -> Bool {
        var held = local.withLock { $0 }?.call((ino, asker)) ?? false
        guard let server = net.withLock({ $0 }) else { return held }
        let others = Set(server.connectedClients.filter { $0 != asker })
        guard !others.isEmpty else { return held }
        let q = Question(others)
        let id = state.withLock { s -> UInt64 in
            let id = s.nextID
            s.nextID += 1
            s.open[id] = q
            return id
        }
        defer { _ = state.withLock { $0.open.removeValue(forKey: id) } }
        let body = NetNotice.openQuery(id: id, ino: ino).encoded
        for c in others where !server.send(.notice, body, to: c) { q.answer(from: c, held: false) }
        // Sessions that end unanswered are let go; look for them now and then.
        while q.answered.wait(timeout: .now() + .milliseconds(500)) == .timedOut {
            let live = Set(server.connectedClients)
            for c in q.waiting.withLock({ $0 }) where !live.contains(c) { q.answer(from: c, held: false) }
        }
        held = held || q.held.load(ordering: .relaxed)
        return held
    }

    /// A node's answer.
    public func received(_ notice: NetNotice, from client: ClientID) throws {
        switch notice {
        case .openReply(let id, let held):
            // An answer to a question that was given up on (its asker's session ended) is
            // harmless and dropped.
            state.withLock { $0.open[id] }?.answer(from: client, held: held)
        case .openQuery, .recordLocksChanged, .roots:
            throw NetError("client \(client) sent a notice only the server sends")
        }
    }
}

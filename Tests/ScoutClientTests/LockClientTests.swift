@testable import ScoutClient
import ScoutFormat
import ScoutNet
import ScoutServer
import Synchronization
import ScoutTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite struct LockClientTests {
    let r1 = LockRange.inodeGroup(1)
    let r2 = LockRange.inodeGroup(5000)

    @Test func missAsksTheServerAndAHitDoesNot() throws {
        let cl = LockCluster(clients: 1)
        let c = cl.clients[0]
        let p = try c.start(r1, .write)
        #expect(p.handle == nil)
        cl.pump()
        let h = try #require(p.handle)
        #expect(h.writeSeq > 0)
        #expect(c.statistics.requests == 1)
        c.unlock(h)
        // Cached after unlock: no request, the handle is immediate.
        let again = try #require(try c.acquire(r1, .read) { _ in })
        #expect(c.statistics.requests == 1)
        #expect(again.writeSeq == h.writeSeq)
        c.unlock(again)
        #expect(c.grantedMode(r1) == .write)
    }

    @Test func upgradeFromReadNeedsNoInvalidation() throws {
        let cl = LockCluster(clients: 1)
        let c = cl.clients[0]
        let r = try c.start(r1, .read)
        cl.pump()
        let rh = try #require(r.handle)
        c.unlock(rh)
        let w = try c.start(r1, .write)
        cl.pump()
        let wh = try #require(w.handle)
        #expect(c.statistics.invalidations == 0)
        #expect(cl.server.grants(r1.start).map(\.mode) == [.write])
        c.unlock(wh)
    }

    @Test func writerGoesDownToReadForAReaderAndKeepsItsCache() throws {
        let cl = LockCluster(clients: 2)
        let (a, b) = (cl.clients[0], cl.clients[1])
        let seen = Mutex<[(LockMode, LockMode)]>([])
        a.addInvalidationHook { _, from, to in seen.withLock { $0.append((from, to)) } }
        let w = try a.start(r1, .write)
        cl.pump()
        a.unlock(try #require(w.handle))
        let r = try b.start(r1, .read)
        cl.pump()
        let rh = try #require(r.handle)
        #expect(a.grantedMode(r1) == .read)
        #expect(seen.withLock { $0.map { "\($0.0)->\($0.1)" } } == ["write->read"])
        // Both read now; a write by b sends a to null.
        b.unlock(rh)
        let w2 = try b.start(r1, .write)
        cl.pump()
        #expect(w2.handle != nil)
        #expect(a.grantedMode(r1) == nil)  // null and idle: freed
        #expect(seen.withLock { $0.map { "\($0.0)->\($0.1)" } } == ["write->read", "read->null"])
    }

    @Test func invalidationWaitsForEveryUserAndStopsNewOnes() throws {
        let cl = LockCluster(clients: 2)
        let (a, b) = (cl.clients[0], cl.clients[1])
        let first = try a.start(r1, .read)
        cl.pump()
        let h1 = try #require(first.handle)
        let h2 = try #require(try a.acquire(r1, .read) { _ in })
        let w = try b.start(r1, .write)
        cl.pump()
        #expect(w.handle == nil)
        // A new reader on a must wait behind the invalidation.
        let late = try a.start(r1, .read)
        #expect(late.handle == nil)
        a.unlock(h1)
        cl.pump()
        #expect(w.handle == nil)
        a.unlock(h2)
        cl.pump()
        let wh = try #require(w.handle)
        #expect(late.handle == nil)
        b.unlock(wh)
        cl.pump()
        // b's write went down to read for a's late reader.
        let lh = try #require(late.handle)
        #expect(b.grantedMode(r1) == .read)
        a.unlock(lh)
    }

    @Test func writeAndWriteOnlySwitchThroughNull() throws {
        let cl = LockCluster(clients: 1)
        let c = cl.clients[0]
        let seen = Mutex<[String]>([])
        c.addInvalidationHook { _, from, to in seen.withLock { $0.append("\(from)->\(to)") } }
        let w = try c.start(r1, .write)
        cl.pump()
        c.unlock(try #require(w.handle))
        let wo = try c.start(r1, .writeOnly)
        cl.pump()
        let h = try #require(wo.handle)
        #expect(seen.withLock { $0 } == ["write->null"])
        #expect(c.grantedMode(r1) == .writeOnly)
        c.unlock(h)
    }

    @Test func writeOnlyIsSharedAcrossClients() throws {
        let cl = LockCluster(clients: 3)
        var hs: [LockHandle] = []
        for c in cl.clients {
            let p = try c.start(LockRange.orphan, .writeOnly)
            cl.pump()
            hs.append(try #require(p.handle))
        }
        #expect(cl.server.grants(LockRange.orphan.start).count == 3)
        #expect(cl.clients.allSatisfy { $0.statistics.invalidations == 0 })
        for (c, h) in zip(cl.clients, hs) { c.unlock(h) }
    }

    @Test func countIsBasePlusUsersAndRemovalTakesItFromThreeToOne() throws {
        let cl = LockCluster(clients: 1)
        let c = cl.clients[0]
        let p = try c.start(r1, .read)
        #expect(c.references(r1) == 4)  // base 2 + the waiter (who becomes the user) + the request
        cl.pump()
        let h = try #require(p.handle)
        #expect(c.references(r1) == 3)  // base 2 + one user
        let h2 = try #require(try c.acquire(r1, .read) { _ in })
        #expect(c.references(r1) == 4)
        c.unlock(h)
        c.unlock(h2)
        #expect(c.references(r1) == 2)
        #expect(c.shrink(1) == 1)  // after a second chance
        #expect(c.references(r1) == 3)  // the null request holds one
        cl.pump()
        #expect(c.cachedCount == 0)
        #expect(c.statistics.freed == 1)
        #expect(cl.server.grants(r1.start).isEmpty)
    }

    @Test func lookupRetriesWhileALockIsBeingFreed() throws {
        let cl = LockCluster(clients: 1, immediate: true)
        let c = cl.clients[0]
        c.unlock(try c.lock(r1, .read))
        let l = try #require(c.find(r1.start))
        // Make it look as if another thread had just won the 3 → 1 removal race.
        l.state.withLock { s in
            s.granted = .null
            #expect(l.beginFreeing(&s))
        }
        let done = Flag()
        let t = Thread {
            let h = try! c.lock(r1, .write)
            c.unlock(h)
            done.set()
        }
        t.start()
        usleep(50_000)
        #expect(!done.isSet)
        #expect(c.statistics.retries > 0)
        c.unindex(l)
        t.join()
        #expect(done.isSet)
        #expect(c.grantedMode(r1) == .write)
    }

    @Test func insertOverlappingALockBeingFreedRetries() throws {
        let cl = LockCluster(clients: 1, immediate: true)
        let c = cl.clients[0]
        let old = testRange(10, 20)
        c.unlock(try c.lock(old, .read))
        let l = try #require(c.find(old.start))
        l.state.withLock { s in
            s.granted = .null
            #expect(l.beginFreeing(&s))
        }
        let done = Flag()
        let t = Thread {
            let h = try! c.lock(testRange(15, 30), .read)
            c.unlock(h)
            done.set()
        }
        t.start()
        usleep(50_000)
        #expect(!done.isSet)
        c.unindex(l)
        t.join()
        #expect(done.isSet)
    }

    @Test func overlappingALiveLockIsAnError() throws {
        let cl = LockCluster(clients: 1, immediate: true)
        let c = cl.clients[0]
        c.unlock(try c.lock(testRange(10, 20), .read))
        #expect(throws: LockError.overlappingRange(requested: testRange(15, 30), held: testRange(10, 20))) {
            _ = try c.lock(testRange(15, 30), .read)
        }
        #expect(throws: LockError.self) { _ = try c.lock(testRange(1, 10), .read) }
        #expect(throws: LockError.self) { _ = try c.lock(testRange(10, 25), .read) }
        // Adjacent is fine.
        c.unlock(try c.lock(testRange(21, 30), .read))
    }

    @Test func idleLimitGivesBackTheOldest() throws {
        let cl = LockCluster(clients: 1, options: LockClientOptions(idleLimit: 3))
        let c = cl.clients[0]
        for g in 0..<8 {
            let p = try c.start(LockRange.inodeGroup(UInt64(g) * 1024), .read)
            cl.pump()
            c.unlock(try #require(p.handle))
        }
        cl.pump()
        #expect(c.cachedCount == 3)
        for g in 5..<8 { #expect(c.grantedMode(LockRange.inodeGroup(UInt64(g) * 1024)) == .read) }
        for g in 0..<5 { #expect(c.grantedMode(LockRange.inodeGroup(UInt64(g) * 1024)) == nil) }
    }

    @Test func shrinkIsBoundedAndSkipsLocksInUse() throws {
        let cl = LockCluster(clients: 1, options: LockClientOptions(shrinkInFlightLimit: 2))
        let c = cl.clients[0]
        var held: LockHandle?
        for g in 0..<6 {
            let p = try c.start(LockRange.inodeGroup(UInt64(g) * 1024), .read)
            cl.pump()
            let h = try #require(p.handle)
            if g == 0 { held = h } else { c.unlock(h) }
        }
        // The first lap clears second chances, the second gives back.
        #expect(c.shrink(10) == 2)
        #expect(c.shrink(10) == 0)  // two null requests out already
        cl.pump()
        #expect(c.shrink(10) == 2)
        cl.pump()
        #expect(c.shrink(10) == 1)
        cl.pump()
        #expect(c.cachedCount == 1)  // the one in use stays
        c.unlock(try #require(held))
    }

    @Test func unknownAndDuplicateInvalidationsAreAnsweredAtOnce() throws {
        let cl = LockCluster(clients: 1)
        let c = cl.clients[0]
        c.receive(.invalidate(LockMessage(key: r2.start, oldMode: .write, newMode: .null)))
        #expect(cl.net.inFlight == 1)
        let p = try c.start(r1, .read)
        cl.pump()
        let h = try #require(p.handle)
        c.unlock(h)
        // A read lock asked to go to read again (a duplicate after failover).
        c.receive(.invalidate(LockMessage(key: r1.start, oldMode: .write, newMode: .read)))
        #expect(c.processInvalidations() == 1)
        #expect(c.grantedMode(r1) == .read)
    }

    @Test func recoveryReportsEveryLockInBatches() throws {
        let cl = LockCluster(clients: 2)
        let (a, b) = (cl.clients[0], cl.clients[1])
        var maxSeq: UInt64 = 0
        for g in 0..<50 {
            let p = try a.start(LockRange.inodeGroup(UInt64(g) * 1024), g % 2 == 0 ? .write : .read)
            cl.pump()
            let h = try #require(p.handle)
            maxSeq = max(maxSeq, h.writeSeq)
            a.unlock(h)
        }
        let q = try b.start(LockRange.orphan, .writeOnly)
        cl.pump()
        b.unlock(try #require(q.handle))
        cl.restartServer(startSeq: 3)
        // A request made during recovery waits for it.
        let w = try b.start(LockRange.inodeGroup(0), .write)
        cl.pump()
        #expect(!cl.server.isRecovering)
        #expect(cl.server.statistics.recoveredLocks == 51)
        #expect(cl.server.grants(LockRange.inodeGroup(1024).start).map(\.mode) == [.read])
        let wh = try #require(w.handle)
        #expect(wh.writeSeq > maxSeq)
        #expect(a.grantedMode(LockRange.inodeGroup(0)) == nil)
        b.unlock(wh)
    }

    @Test func aClientThatDoesNotRecoverIsDroppedAfterTheTimeout() throws {
        let cl = LockCluster(clients: 2)
        let (a, b) = (cl.clients[0], cl.clients[1])
        let p = try a.start(r1, .write)
        cl.pump()
        a.unlock(try #require(p.handle))
        cl.net.detachClient(a.id)  // a is gone and will never answer
        cl.restartServer(startSeq: 10, now: 0, timeout: 1_000)
        let w = try b.start(r1, .write)
        cl.pump()
        #expect(w.handle == nil)
        #expect(cl.server.isRecovering)
        cl.server.tick(now: 999)
        cl.pump()
        #expect(w.handle == nil)
        cl.server.tick(now: 1_000)
        cl.pump()
        #expect(w.handle != nil)
        #expect(cl.server.statistics.clientsTimedOut == 1)
    }

    /// With linger, a lock in use when another client asks for it stays while its users come
    /// back within the linger, and goes once they pause; one used without a pause goes when
    /// the hold runs out. The other client's request waits meanwhile, and gets the lock then.
    @Test(.timeLimit(.minutes(1))) func aLockInUseLingersWhileUsedThenGoes() throws {
        let cl = LockCluster(clients: 2, immediate: true,
                             options: LockClientOptions(linger: .milliseconds(150), maxHold: .milliseconds(1500)))
        let (a, b) = (cl.clients[0], cl.clients[1])
        for c in cl.clients { c.startWorker() }
        defer { for c in cl.clients { c.stopWorker() } }
        let clock = ContinuousClock()
        let first = try a.lock(r1, .write)
        let start = clock.now
        a.unlock(first)
        let granted = Flag()
        let held = Mutex<LockHandle?>(nil)
        if let h = try b.acquire(r1, .write, { h in held.withLock { $0 = h }; granted.set() }) {
            held.withLock { $0 = h }
            granted.set()
        }
        // a keeps using it every 10 ms for 500 ms: never refused, and b keeps waiting.
        var refused = 0
        while clock.now - start < .milliseconds(500) {
            if let h = try a.tryLock(r1, .write) { a.unlock(h) } else { refused += 1 }
            usleep(10_000)
        }
        #expect(refused == 0, "a lingering lock refused its own users")
        #expect(!granted.isSet, "the lock went while its users kept coming back")
        // a pauses: within the linger (and some slack) b has it.
        let paused = clock.now
        while !granted.isSet && clock.now - paused < .seconds(5) { usleep(1_000) }
        #expect(granted.isSet)
        #expect(clock.now - paused < .milliseconds(1000), "the lock stayed \(clock.now - paused) after its users paused")
        // Given up: null, or already freed (a slow machine may look between the two).
        #expect((a.grantedMode(r1) ?? .null) == .null)
        // b uses it without a pause while a asks: it goes when b's hold runs out.
        let bGot = clock.now
        let aGranted = Flag()
        if try a.acquire(r1, .write, { h in a.unlock(h); aGranted.set() }) != nil { aGranted.set() }
        b.unlock(try #require(held.withLock { $0 }))
        while !aGranted.isSet && clock.now - bGot < .seconds(5) {
            if let h = try b.tryLock(r1, .write) { b.unlock(h) }
            usleep(5_000)
        }
        #expect(aGranted.isSet, "a lock in constant use was never given up")
        #expect(clock.now - bGot >= .milliseconds(1200), "given up before its hold ran out")
    }

    /// A client whose reads of a lock were twice in a row followed by an upgrade to write asks
    /// for write at its next read (one hand-over instead of two), until such a write goes
    /// unused by any writer; then it asks for read again.
    @Test func readsThatKeepBeingUpgradedAreAskedForAsWrites() throws {
        let cl = LockCluster(clients: 2, options: LockClientOptions(predictsUpgrades: true))
        let (a, b) = (cl.clients[0], cl.clients[1])
        func bTakesIt() throws {
            let w = try b.start(r1, .write)
            cl.pump()
            b.unlock(try #require(w.handle))
        }
        for _ in 0..<2 {
            let r = try a.start(r1, .read)
            cl.pump()
            let rh = try #require(r.handle)
            #expect(a.grantedMode(r1) == .read)
            let w = try a.start(r1, .write)
            cl.pump()
            a.unlock(try #require(w.handle))
            a.unlock(rh)
            try bTakesIt()
        }
        // The third read is asked for as a write, and serves the write after it at once.
        let r = try a.start(r1, .read)
        cl.pump()
        let rh = try #require(r.handle)
        #expect(a.grantedMode(r1) == .write)
        let w = try #require(try a.tryLock(r1, .write))
        a.unlock(w)
        a.unlock(rh)
        try bTakesIt()
        // Still predicted; this time no writer uses it, so the guess is dropped.
        let unused = try a.start(r1, .read)
        cl.pump()
        #expect(a.grantedMode(r1) == .write)
        a.unlock(try #require(unused.handle))
        try bTakesIt()
        let plain = try a.start(r1, .read)
        cl.pump()
        #expect(a.grantedMode(r1) == .read)
        a.unlock(try #require(plain.handle))
    }
}

import Synchronization

/// The topology declared through a client, kept so that recovery can declare it again.
///
/// Deletions remove what they delete. A server-named queue is recorded under the name the broker gave it;
/// after recovery it has a new name, and bindings and consumers follow (``renamed(_:)``).
final class TopologyRecorder: Sendable {
    private struct State {
        var exchanges: [String: Exchange] = [:]
        var exchangeOrder: [String] = []
        var queues: [String: Queue] = [:]
        var queueOrder: [String] = []
        var bindings: [Binding] = []
        var renames: [String: String] = [:]
    }

    private let state = StateLock(State())

    func record(_ exchange: Exchange) {
        state.withLock { state in
            if state.exchanges.updateValue(exchange, forKey: exchange.name) == nil { state.exchangeOrder.append(exchange.name) }
        }
    }

    /// Records a declared queue under `actualName` (the broker's name for a server-named one).
    func record(_ queue: Queue, actualName: String) {
        state.withLock { state in
            if state.queues.updateValue(queue, forKey: actualName) == nil { state.queueOrder.append(actualName) }
        }
    }

    func record(_ binding: Binding) {
        state.withLock { state in
            if !state.bindings.contains(binding) { state.bindings.append(binding) }
        }
    }

    func forget(_ binding: Binding) {
        state.withLock { $0.bindings.removeAll { $0 == binding } }
    }

    func forgetQueue(_ name: String) {
        state.withLock { state in
            state.queues[name] = nil
            state.queueOrder.removeAll { $0 == name }
            state.bindings.removeAll { $0.destination == .queue(name) }
        }
    }

    func forgetExchange(_ name: String) {
        state.withLock { state in
            state.exchanges[name] = nil
            state.exchangeOrder.removeAll { $0 == name }
            state.bindings.removeAll { $0.source == name || $0.destination == .exchange(name) }
        }
    }

    /// The current name of a queue that may have been renamed by recovery.
    func renamed(_ name: String) -> String {
        state.withLock { $0.renames[name] ?? name }
    }

    /// Declares everything again on `channel`: exchanges, queues (renaming server-named ones), bindings.
    func redeclare(on channel: Channel) async throws {
        let snapshot = state.withLock { $0 }
        for name in snapshot.exchangeOrder {
            if let exchange = snapshot.exchanges[name] { try await channel.declare(exchange, recording: false) }
        }
        var renames: [String: String] = [:]
        for name in snapshot.queueOrder {
            guard let queue = snapshot.queues[name] else { continue }
            let info = try await channel.declare(queue, recording: false)
            if info.name != name { renames[name] = info.name }
        }
        for var binding in snapshot.bindings {
            if case .queue(let queue) = binding.destination, let renamed = renames[queue] {
                binding.destination = .queue(renamed)
            }
            try await channel.bind(binding, recording: false)
        }
        guard !renames.isEmpty else { return }
        state.withLock { state in
            for (old, new) in renames {
                if let queue = state.queues.removeValue(forKey: old) {
                    state.queues[new] = queue
                    if let index = state.queueOrder.firstIndex(of: old) { state.queueOrder[index] = new }
                }
                state.bindings = state.bindings.map { binding in
                    guard binding.destination == .queue(old) else { return binding }
                    var renamedBinding = binding
                    renamedBinding.destination = .queue(new)
                    return renamedBinding
                }
                for (original, current) in state.renames where current == old { state.renames[original] = new }
                state.renames[old] = new
            }
        }
    }
}

/// A connection's channels: by number, for the frames that name one, and as a list, for the loops that visit
/// every channel. Numbers run up to channel_max (2,047 with RabbitMQ), and walking them all each time the I/O
/// thread went to sleep showed in profiles.
struct ChannelTable {
    private var byNumber: [ChannelState?]
    /// The numbers of every channel in the table.
    private(set) var numbers: [UInt16] = []

    init(channelMax: Int) {
        byNumber = Array(repeating: nil, count: max(channelMax, 1) + 1)
    }

    /// The highest channel number.
    var highestNumber: Int { byNumber.count - 1 }

    /// The channel numbered `number` (at most ``highestNumber``), read and changed in place: a get would retain
    /// every field of the channel, and a get and a set would copy its queues.
    subscript(number: UInt16) -> ChannelState? {
        @inline(__always) _read { yield byNumber[Int(number)] }
        @inline(__always) _modify { yield &byNumber[Int(number)] }
    }

    /// Whether a channel has the number.
    func contains(_ number: UInt16) -> Bool {
        Int(number) < byNumber.count && byNumber[Int(number)] != nil
    }

    mutating func insert(_ channel: ChannelState) {
        byNumber[Int(channel.number)] = channel
        numbers.append(channel.number)
    }

    /// Removes the channel numbered `number` if it is the incarnation `link` refers to.
    mutating func remove(_ number: UInt16, link: ChannelLink) {
        guard byNumber[Int(number)]?.link === link else { return }
        byNumber[Int(number)] = nil
        numbers.removeAll { $0 == number }
    }
}

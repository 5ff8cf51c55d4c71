/// A connection's channels: by number, for the frames that name one, and as a list, for the loops that visit
/// every channel. Numbers run up to channel_max (2,047 with RabbitMQ), and walking them all each time the I/O
/// thread went to sleep showed in profiles.
struct ChannelTable {
    private var byNumber: [ChannelState?]
    /// Every channel in the table.
    private(set) var all: [ChannelState] = []

    init(channelMax: Int) {
        byNumber = Array(repeating: nil, count: max(channelMax, 1) + 1)
    }

    /// The highest channel number.
    var highestNumber: Int { byNumber.count - 1 }

    subscript(number: Int) -> ChannelState? { byNumber[number] }

    mutating func insert(_ channel: ChannelState) {
        byNumber[Int(channel.number)] = channel
        all.append(channel)
    }

    /// Removes `channel`, unless its number already belongs to another.
    mutating func remove(_ channel: ChannelState) {
        guard byNumber[Int(channel.number)] === channel else { return }
        byNumber[Int(channel.number)] = nil
        all.removeAll { $0 === channel }
    }
}

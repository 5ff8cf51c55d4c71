import Foundation
import PostgresNIO

/// Reads a connection URL, `postgres://user[:password]@host[:port]/database` (also `postgresql://`), as the tests,
/// `make test` (`POSTGRES_URL`) and most deployment tools give it.
public enum PostgresURL {
    /// A `PostgresClient` configuration for `url`, without TLS: the port defaults to 5432, the database to the user.
    /// - Throws: ``PostgresURLError`` if `url` is not such a URL.
    public static func configuration(_ url: String) throws -> PostgresClient.Configuration {
        guard let components = URLComponents(string: url),
              components.scheme == "postgres" || components.scheme == "postgresql",
              let host = components.host, !host.isEmpty,
              let user = components.user, !user.isEmpty
        else { throw PostgresURLError(url: url) }
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        return PostgresClient.Configuration(host: host, port: components.port ?? 5432, username: user,
                                            password: components.password, database: path.isEmpty ? user : path,
                                            tls: .disable)
    }
}

/// A connection URL that ``PostgresURL/configuration(_:)`` cannot read.
public struct PostgresURLError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The URL, as given.
    public var url: String

    /// Says what was expected; the URL is left out, since it may carry a password.
    public var description: String { "not a postgres://user[:password]@host[:port]/database URL" }
}

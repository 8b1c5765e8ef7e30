import CCurl
#if canImport(Glibc)
import Glibc
#endif

/// An HTTP answer: the last response's status and headers (after redirects),
/// and its body when it was kept in memory.
public struct HTTPResponse: Sendable {
    public var status: Int
    /// Header names lower-cased; the last value of each.
    public var headers: [String: String]
    public var body: [UInt8]
}

/// A transfer that did not produce an HTTP answer (DNS, connect, TLS, a
/// timeout, a body past its limit), in libcurl's words.
public struct HTTPError: Error, Sendable, CustomStringConvertible {
    public var message: String
    /// TLS verification failed (an untrusted or mismatched certificate).
    public var tls: Bool
    public var description: String { message }
}

/// Blocking HTTP(S) GETs through libcurl, for the registry client: TLS with
/// the system's trust store (or a given CA file), redirects followed (blob
/// storage often answers elsewhere; libcurl sends a custom Authorization
/// header to the first host only), http and https only.
public enum HTTP {
    public struct Options: Sendable {
        public var caFile: String?
        public var connectTimeoutS: Int = 30
        /// A transfer slower than 1 KiB/s for this long is given up.
        public var stallTimeoutS: Int = 60
        /// Bodies kept in memory are refused past this.
        public var maxMemoryBody: Int = 64 << 20
        public init(caFile: String? = nil) { self.caFile = caFile }
    }

    private static let initialized: Bool = { curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK }()

    /// GETs `url`. A 2xx body goes to `sink` with its status as it arrives
    /// when one is given (false from it stops the transfer), else into
    /// `body`; other answers' bodies are kept (up to 64 KiB) for their error
    /// message. `from` > 0 asks for the rest of the resource from that
    /// offset (206; a server that cannot answers 200 with all of it).
    public static func get(_ url: String, headers: [String] = [], from: Int64 = 0, options: Options = Options(),
                           sink: ((Int, UnsafeRawBufferPointer) -> Bool)? = nil) throws(HTTPError) -> HTTPResponse {
        guard initialized, let curl = curl_easy_init() else { throw HTTPError(message: "libcurl could not start", tls: false) }
        defer { curl_easy_cleanup(curl) }
        let state = Transfer(sink: sink, limit: options.maxMemoryBody)
        let me = Unmanaged.passUnretained(state).toOpaque()
        var list: UnsafeMutablePointer<curl_slist>?
        for h in headers { list = curl_slist_append(list, h) }
        defer { curl_slist_free_all(list) }
        let done: CURLcode = withExtendedLifetime(state) {
            _ = ccurl_setopt_ptr(curl, CURLOPT_URL, url)
            _ = ccurl_setopt_ptr(curl, CURLOPT_HTTPHEADER, list)
            _ = ccurl_setopt_ptr(curl, CURLOPT_PROTOCOLS_STR, "http,https")
            _ = ccurl_setopt_ptr(curl, CURLOPT_REDIR_PROTOCOLS_STR, "http,https")
            _ = ccurl_setopt_long(curl, CURLOPT_FOLLOWLOCATION, 1)
            _ = ccurl_setopt_long(curl, CURLOPT_MAXREDIRS, 10)
            _ = ccurl_setopt_long(curl, CURLOPT_NOSIGNAL, 1)
            _ = ccurl_setopt_long(curl, CURLOPT_CONNECTTIMEOUT, options.connectTimeoutS)
            _ = ccurl_setopt_long(curl, CURLOPT_LOW_SPEED_LIMIT, 1024)
            _ = ccurl_setopt_long(curl, CURLOPT_LOW_SPEED_TIME, options.stallTimeoutS)
            _ = ccurl_setopt_ptr(curl, CURLOPT_USERAGENT, "sandpit")
            if let ca = options.caFile { _ = ccurl_setopt_ptr(curl, CURLOPT_CAINFO, ca) }
            if from > 0 { _ = ccurl_setopt_off(curl, CURLOPT_RESUME_FROM_LARGE, curl_off_t(from)) }
            _ = ccurl_setopt_ptr(curl, CURLOPT_HEADERDATA, me)
            _ = ccurl_setopt_data_cb(curl, CURLOPT_HEADERFUNCTION) { ptr, size, n, user in
                let t = Unmanaged<Transfer>.fromOpaque(user!).takeUnretainedValue()
                t.header(UnsafeRawBufferPointer(start: ptr, count: size * n))
                return size * n
            }
            _ = ccurl_setopt_ptr(curl, CURLOPT_WRITEDATA, me)
            _ = ccurl_setopt_data_cb(curl, CURLOPT_WRITEFUNCTION) { ptr, size, n, user in
                let t = Unmanaged<Transfer>.fromOpaque(user!).takeUnretainedValue()
                return t.data(UnsafeRawBufferPointer(start: ptr, count: size * n)) ? size * n : 0
            }
            return curl_easy_perform(curl)
        }
        if done != CURLE_OK {
            if state.overLimit { throw HTTPError(message: "\(url): the answer is larger than \(options.maxMemoryBody >> 20) MiB", tls: false) }
            if done == CURLE_WRITE_ERROR, state.stopped { throw HTTPError(message: "\(url): the transfer was stopped", tls: false) }
            let why = String(cString: curl_easy_strerror(done))
            let tls = done == CURLE_PEER_FAILED_VERIFICATION || done == CURLE_SSL_CACERT_BADFILE || done == CURLE_SSL_CONNECT_ERROR
            throw HTTPError(message: "\(url): \(why)", tls: tls)
        }
        return HTTPResponse(status: Int(ccurl_response_code(curl)), headers: state.headers, body: state.body)
    }

    /// One transfer's state, reached from libcurl's callbacks.
    private final class Transfer {
        let sink: ((Int, UnsafeRawBufferPointer) -> Bool)?
        let limit: Int
        var status = 0
        var headers: [String: String] = [:]
        var body: [UInt8] = []
        var overLimit = false
        var stopped = false

        init(sink: ((Int, UnsafeRawBufferPointer) -> Bool)?, limit: Int) {
            self.sink = sink
            self.limit = limit
        }

        func header(_ raw: UnsafeRawBufferPointer) {
            let line = String(decoding: raw, as: UTF8.self).trimmingSuffix()
            if line.hasPrefix("HTTP/") {
                // A new response (after a redirect or a 100): its headers replace the last ones.
                headers = [:]
                status = Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
            } else if let colon = line.firstIndex(of: ":") {
                let name = line[..<colon].lowercased()
                headers[name] = String(line[line.index(after: colon)...]).trimmingPrefix()
            }
        }

        func data(_ bytes: UnsafeRawBufferPointer) -> Bool {
            if (200..<300).contains(status), let sink {
                if sink(status, bytes) { return true }
                stopped = true
                return false
            }
            let cap = (200..<300).contains(status) ? limit : 64 << 10
            guard body.count + bytes.count <= cap else { overLimit = (200..<300).contains(status); return !overLimit }
            body.append(contentsOf: bytes)
            return true
        }
    }
}

private extension String {
    func trimmingSuffix() -> String {
        var s = Substring(self)
        while let l = s.last, l.isNewline || l == " " || l == "\t" { s = s.dropLast() }   // "\r\n" is one Character
        return String(s)
    }
    func trimmingPrefix() -> String { String(drop { $0 == " " || $0 == "\t" }).trimmingSuffix() }
}

"""The fuzz's cases: a valid ``POST /v1/chat/completions`` (a key, a JSON body with a unique id), then
seeded mutations of its parts; the same seed gives the same bytes. See :mod:`tests.support.fuzz`."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

ID_RE = re.compile(rb"fz-(\d{5})-(\d)")


@dataclass
class Case:
    n: int
    data: bytes
    why: list[str]
    methods: tuple[bytes, ...]  # of the requests it was built with (two when pipelined)
    writes: tuple[int, ...]  # offsets at which the data is split into separate writes
    pause_s: float = 0.0  # between those writes

    @property
    def requests(self) -> int:
        return len(self.methods)

    def show(self) -> str:
        why = ", ".join(self.why) or "unmutated"
        return f"case {self.n} ({why}; {len(self.data)} bytes in {len(self.writes) + 1} writes): {self.data[:600]!r}"


@dataclass
class Chunk:
    size: bytes
    data: bytes
    ext: bytes = b""
    tail: bytes = b"\r\n"


@dataclass
class Req:
    """A request as editable parts; :meth:`wire` joins them."""

    body: bytes
    headers: list[bytes]
    method: bytes = b"POST"
    target: bytes = b"/v1/chat/completions"
    version: bytes | None = b"HTTP/1.1"
    sp1: bytes = b" "
    sp2: bytes = b" "
    eol: bytes = b"\r\n"
    chunks: list[Chunk] | None = None  # None: the body as is (Content-Length framing)
    last: bytes = b"0"
    trailers: list[bytes] = field(default_factory=list)
    end: bytes = b"\r\n"
    prefix: bytes = b""

    def wire(self) -> bytes:
        line = (
            self.method
            + self.sp1
            + self.target
            + (self.sp2 + self.version if self.version is not None else b"")
        )
        head = self.prefix + self.eol.join([line, *self.headers]) + self.eol + self.eol
        if self.chunks is None:
            return head + self.body
        parts = [b"%b%b\r\n%b%b" % (c.size, c.ext, c.data, c.tail) for c in self.chunks]
        trailer = b"".join(t + b"\r\n" for t in self.trailers)
        return head + b"".join(parts) + self.last + b"\r\n" + trailer + self.end

    def header_index(self, name: bytes) -> int | None:
        for i, line in enumerate(self.headers):
            if line.split(b":", 1)[0].strip().lower() == name:
                return i
        return None

    def set_header(self, name: bytes, value: bytes | None) -> None:
        i = self.header_index(name.lower())
        if value is None:
            if i is not None:
                del self.headers[i]
        elif i is None:
            self.headers.append(name + b": " + value)
        else:
            self.headers[i] = name + b": " + value


def base(n: int, k: int, key: str, rng: random.Random) -> Req:
    payload: dict[str, object] = {
        "model": "mock",
        "messages": [{"role": "user", "content": f"fz-{n:05d}-{k}"}],
    }
    if rng.random() < 0.15:  # a stream the gateway forwards unchanged (usage already asked for)
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    if rng.random() < 0.03:  # about the gateway's body limit here (1 MiB): forwarded whole, or a 413
        payload["pad"] = "p" * rng.choice([900_000, 1_100_000])
    body = json.dumps(payload).encode()
    headers = [
        b"Host: 127.0.0.1",
        b"Authorization: Bearer " + key.encode(),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
    ]
    rng.shuffle(headers)
    return Req(body=body, headers=headers)


def to_chunked(r: Req, rng: random.Random, te: bytes = b"chunked") -> None:
    if r.chunks is not None:
        return
    r.set_header(b"Content-Length", None)
    r.headers.append(b"Transfer-Encoding: " + te)
    pieces, rest = [], r.body
    for _ in range(rng.randint(0, 3)):
        cut = rng.randint(1, max(1, len(rest) - 1))
        pieces.append(rest[:cut])
        rest = rest[cut:]
    pieces.append(rest)
    r.chunks = [Chunk(b"%x" % len(p), p) for p in pieces if p]


# fmt: off
METHODS = [
    b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT", b"post", b"P0ST", b"",
    b"PO ST", b"POST\x00", b"PO\tST", b"X" * 300, b"POST/", b"\xc3\xa9", b"GET /x HTTP/1.1\r\nPOST", b"PRI", b"M-SEARCH",
]
TARGETS = [
    b"/v1/completions", b"/v1/embeddings", b"/v1/models", b"/v1/models/mock", b"/health", b"/metrics",
    b"/admin/v1/keys", b"/v1/chat/completions?x=1", b"/v1/chat/completions?api_key=sk-leak&x=2",
    b"/v1/chat/completions?token=abc", b"/v1/chat/completions?a=%zz&b=%20", b"/v1/../admin/v1/keys",
    b"/v1/%2e%2e/admin/v1/keys", b"/v1//chat/completions", b"/v1/chat/completions/",
    b"/v1/chat/completions#f", b"http://127.0.0.1/v1/chat/completions", b"*", b"",
    b"/v1/chat/completions%00", b"/v1/chat/\xffcompletions", b"/v1/CHAT/completions",
    b"/v1/chat/completions;x", b"/v1/load_lora_adapter", b"//v1/chat/completions",
    b"/v1/chat/completions?a=b c", b"v1/chat/completions", b"/v1/chat/completions?" + b"q" * 3000,
    b"/v1/chat/completions\\..\\x", b"/v1/chat/%63ompletions", b"/v1/chat/completions?\x7f",
    b"/ui", b"/ui/", b"/ui/app.js", b"/openapi.json", b"/admin/v1/deployments", b"/admin/v1/usage", b"/",
]
VERSIONS = [
    b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.10", b"HTTP/1", b"HTTP/1.1 ",
    b"HTTP/1.1\x00", b"HTTP/11", b"HTTP/3.0", b"HTTPS/1.1", b"HTTP/1.1\t", None,
]
SPACES = [
    b"  ", b"\t", b"", b" \t", b"\x0b",
]
NAME_JUNK = [
    b" ", b"\t", b"(", b"@", b"\x7f", b"\x00", b"\xe9", b"/", b'"', b"\r", b"\n",
]
VALUE_JUNK = [
    b"\x00", b"\r", b"\n", b"\x01", b"\x7f", b"\xff", b" ", b"\t", b"\x0b", b"\r\n", b"\n ",
]
EXTRA_HEADERS = [
    b"Expect: 100-continue", b"Connection: close", b"Connection: keep-alive", b"Upgrade: h2c",
    b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: websocket", b"X-Forwarded-For: 1.2.3.4",
    b"Content-Type: text/plain", b"Authorization: Bearer sk-wrong", b"Transfer-Encoding: chunked",
    b"Content-Length: 0", b"TE: trailers", b"Keep-Alive: timeout=1", b"Trailer: Authorization",
    b"Expect: something-else", b"Content-Encoding: gzip", b"Proxy-Connection: keep-alive",
]
TES = [
    b"chunked", b"Chunked", b"CHUNKED", b"gzip, chunked", b"chunked, gzip", b"identity", b"chunked, chunked",
    b" chunked", b"chunked;q=1", b"x-chunked", b"chunked\x00", b"", b"deflate",
]
SIZES = [
    b"000{n}", b"{N}", b"ffffffffffffffffffff", b"-1", b"0x{n}", b" {n}", b"{n} ", b"g", b"", b"{n}\x00",
    b"+{n}", b"{n}0",
]
EXTS = [
    b";a=b", b';a="q"', b"; a", b";", b";\x00", b';a="unterminated', b";a=b;c", b" ;a", b";" + b"e" * 5000,
]
TAILS = [
    b"\n", b"", b"\r\r\n", b"xx\r\n", b"\r",
]
TRAILERS = [
    b"X-T: 1", b"Authorization: Bearer sk-trailer", b"Content-Length: 5", b"Host: evil", b"bad trailer",
    b"X: \x00", b"Transfer-Encoding: chunked", b" folded",
]
# fmt: on


def mutate_method(r: Req, rng: random.Random) -> str:
    r.method = rng.choice(METHODS)
    return f"method {r.method[:20]!r}"


def mutate_target(r: Req, rng: random.Random) -> str:
    r.target = rng.choice(TARGETS)
    return f"target {r.target[:40]!r}"


def mutate_version(r: Req, rng: random.Random) -> str:
    r.version = rng.choice(VERSIONS)
    if r.version == b"HTTP/1.0" and rng.random() < 0.5:
        r.headers.append(b"Connection: keep-alive")
    return f"version {r.version!r}"


def mutate_spaces(r: Req, rng: random.Random) -> str:
    if rng.random() < 0.5:
        r.sp1 = rng.choice(SPACES)
    else:
        r.sp2 = rng.choice(SPACES)
    return "request-line spacing"


def mutate_name(r: Req, rng: random.Random) -> str:
    i = rng.randrange(len(r.headers))
    name, sep, value = r.headers[i].partition(b":")
    choice = rng.random()
    if choice < 0.2:
        name = b""
    elif choice < 0.3:
        name = name.upper() if rng.random() < 0.5 else name.lower()
    elif choice < 0.4:
        name = b"X-" + b"n" * rng.choice([100, 20_000])
    else:
        pos = rng.randint(0, len(name))
        name = name[:pos] + rng.choice(NAME_JUNK) + name[pos:]
    r.headers[i] = name + sep + value
    return f"header name {name[:30]!r}"


def mutate_value(r: Req, rng: random.Random) -> str:
    i = rng.randrange(len(r.headers))
    line = r.headers[i]
    if rng.random() < 0.1:
        r.headers[i] = line + b"v" * rng.choice([10_000, 70_000])
        return f"long value on {line[:12]!r}"
    colon = line.find(b":") + 1
    pos = rng.randint(colon, len(line))
    junk = rng.choice(VALUE_JUNK)
    r.headers[i] = line[:pos] + junk + line[pos:]
    return f"value {junk!r} in {line[:12]!r}"


def mutate_fold(r: Req, rng: random.Random) -> str:
    i = rng.randrange(len(r.headers) + 1)
    r.headers.insert(i, rng.choice([b" folded", b"\tfolded", b" ", b"  Bearer x"]))
    return f"obs-fold at {i}"


def mutate_extra(r: Req, rng: random.Random) -> str:
    extra = rng.choice(EXTRA_HEADERS)
    r.headers.insert(rng.randint(0, len(r.headers)), extra)
    return f"extra {extra!r}"


def mutate_remove(r: Req, rng: random.Random) -> str:
    name = rng.choice([b"host", b"authorization", b"content-length", b"content-type"])
    i = r.header_index(name)
    if i is not None:
        del r.headers[i]
    return f"no {name.decode()}"


def mutate_host(r: Req, rng: random.Random) -> str:
    value = rng.choice([b"127.0.0.1", b"other.example", b"", b"a b", b"a\x00b", b"[::1]:80", b"x" * 300])
    r.headers.insert(rng.randint(0, len(r.headers)), b"Host: " + value)
    if rng.random() < 0.3:
        r.set_header(b"Host", None)  # the first one goes: a single odd Host
    return f"Host {value[:20]!r}"


def mutate_length(r: Req, rng: random.Random) -> str:
    n = len(r.body)
    options = [
        b"%d" % (n - 1),
        b"%d" % (n + 1),
        b"%d" % (n + 10),
        b"0",
        b"+%d" % n,
        b"-1",
        b" %d " % n,
        b"%d, %d" % (n, n),
        b"%d,%d" % (n, n + 1),
        b"0x%x" % n,
        b"%d\x00" % n,
        b"1e2",
        b"9" * 25,
        b"",
        b"%d %d" % (n, n),
        b"0%d" % n,
    ]
    value = rng.choice(options)
    choice = rng.random()
    if choice < 0.7:
        r.set_header(b"Content-Length", value)
    elif choice < 0.85:
        r.headers.append(b"Content-Length: %d" % n)  # the same twice
    else:
        r.headers.append(b"Content-Length: " + value)
    return f"Content-Length {value[:20]!r}"


def mutate_te(r: Req, rng: random.Random) -> str:
    te = rng.choice(TES)
    keep_length = rng.random() < 0.3
    length = r.header_index(b"content-length")
    saved = r.headers[length] if length is not None else None
    to_chunked(r, rng, te)
    if keep_length and saved is not None:
        r.headers.insert(rng.randint(0, len(r.headers)), saved)
    if rng.random() < 0.2:
        r.headers.append(b"Transfer-Encoding: " + rng.choice(TES))
    return f"TE {te!r}" + (" + Content-Length" if keep_length else "")


def mutate_chunks(r: Req, rng: random.Random) -> str:
    to_chunked(r, rng)
    assert r.chunks is not None
    what = rng.randrange(6)
    if what == 4 or not r.chunks:
        if rng.random() < 0.5:
            r.trailers.append(rng.choice(TRAILERS))
        else:
            r.last = rng.choice([b"00", b"0;x=1", b"000000", b"0 ", b"0\x00"])
        if rng.random() < 0.2:
            r.end = rng.choice([b"\n", b""])
        return "last chunk / trailer"
    chunk = rng.choice(r.chunks)
    n = len(chunk.data)
    if what == 0:
        chunk.size = rng.choice(SIZES).replace(b"{n}", b"%x" % n).replace(b"{N}", b"%X" % n)
        return f"chunk size {chunk.size[:20]!r}"
    if what == 1:
        chunk.ext = rng.choice(EXTS)
        return f"chunk ext {chunk.ext[:12]!r}"
    if what == 2:
        chunk.data = chunk.data[:-1] if rng.random() < 0.5 and n > 1 else chunk.data + b"}"
        return "chunk data length differs from its size"
    if what == 3:
        chunk.tail = rng.choice(TAILS)
        return f"chunk tail {chunk.tail!r}"
    r.chunks.insert(rng.randint(0, len(r.chunks)), Chunk(b"0", b""))  # an empty chunk: the end, early
    return "early zero chunk"


def mutate_eol(r: Req, rng: random.Random) -> str:
    choice = rng.random()
    if choice < 0.4:
        r.eol = rng.choice([b"\n", b"\r", b"\n\r", b"\r\r\n"])
        return f"line ends {r.eol!r}"
    if choice < 0.7:
        i = rng.randrange(len(r.headers))
        r.headers[i] += rng.choice([b"\r", b"\n", b"\r\r"])
        return "a stray line end"
    r.prefix = rng.choice([b"\r\n", b"\n", b"\r\n\r\n", b" ", b"\x00", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"])
    return f"prefix {r.prefix!r}"


# fmt: off
MUTATORS: list[tuple[Callable[[Req, random.Random], str], int]] = [
    (mutate_method, 3), (mutate_target, 4), (mutate_version, 3), (mutate_spaces, 2), (mutate_name, 4),
    (mutate_value, 4), (mutate_fold, 2), (mutate_extra, 4), (mutate_remove, 2), (mutate_host, 3),
    (mutate_length, 5), (mutate_te, 5), (mutate_chunks, 6), (mutate_eol, 3),
]
# fmt: on


def build(n: int, k: int, key: str, rng: random.Random, mutations: int) -> tuple[bytes, list[str], bytes]:
    r = base(n, k, key, rng)
    why = []
    funcs, weights = zip(*MUTATORS, strict=True)
    for _ in range(mutations):
        why.append(rng.choices(funcs, weights)[0](r, rng))
    return r.wire(), why, r.method


def cases(seed: int, count: int, key: str) -> Iterator[Case]:
    """``count`` cases, the same for the same seed."""
    rng = random.Random(seed)
    for n in range(count):
        data, why, method = build(n, 0, key, rng, rng.choice([0, 1, 1, 1, 2, 2, 3]))
        methods: tuple[bytes, ...] = (method,)
        if rng.random() < 0.12:  # a second request in the same write
            second, why2, method2 = build(n, 1, key, rng, rng.choice([0, 0, 1]))
            data += second
            why += ["pipelined", *why2]
            methods = (method, method2)
        roll = rng.random()
        if roll < 0.06:  # stray bytes in the head
            head_end = data.find(b"\r\n\r\n")
            pos = rng.randint(0, head_end if head_end > 0 else len(data))
            junk = rng.choice([b"\x00", b"\r", b"\n", b"\r\n", b" ", b"\x7f", b"\xff", b":"])
            data = data[:pos] + junk + data[pos:]
            why.append(f"{junk!r} at {pos}")
        elif roll < 0.14:
            cut = rng.randint(0, len(data) - 1)
            data = data[:cut]
            why.append(f"cut at {cut}")
        dribble = rng.random() < 0.1  # pieces apart in time, so the server reads them one by one
        if dribble:
            why.append("dribbled")
        pieces = rng.choice([2, 3, 5]) if dribble else rng.choice([0, 0, 1, 2])
        writes = tuple(sorted(rng.sample(range(1, len(data)), max(0, min(len(data) - 1, pieces)))))
        yield Case(n, data, why, methods, writes, 0.02 if dribble else 0.0)

"""A differential HTTP/1.1 request fuzz: seeded mutations, h11 as the oracle, raw sockets to a server.

Three parts, each usable alone:

- :func:`cases` yields deterministic :class:`Case` s (the same seed gives the same bytes): a valid
  ``POST /v1/chat/completions`` with a key and a JSON body carrying a unique id, then 0–3 mutations of
  its method, target, version, spacing, header names and values, folding, CR/LF/NUL, Content-Length
  and Transfer-Encoding, chunk sizes, extensions and trailers, Host, line endings, plus at times a
  second pipelined request, stray bytes, or a cut-off end. ``Case.why`` lists what was done.
- :func:`h11_verdict` asks h11, as a server-side parser (``h11.Connection(h11.SERVER)``), which of the
  case's requests it accepts whole, and what it parsed: method, target, body.
- :func:`exchange` sends a case over a raw TCP connection (in 1–3 writes) and reads what comes back
  until the expected answers are in, the server closes, or a deadline passes. Answers are framed with
  an h11 client, so a malformed answer is reported, not guessed around.

Only the wire is looked at: nothing here knows which parser the server under test runs. Example::

    for case in cases(seed=12, count=2000, key="sk-..."):
        verdict = h11_verdict(case.data)
        outcome = await exchange(port, case, verdict, deadline_s=5)
"""

from tests.support.fuzz.cases import ID_RE, Case, cases
from tests.support.fuzz.oracle import Parsed, Verdict, h11_verdict
from tests.support.fuzz.wire import Answer, Outcome, exchange

__all__ = ["ID_RE", "Answer", "Case", "Outcome", "Parsed", "Verdict", "cases", "exchange", "h11_verdict"]

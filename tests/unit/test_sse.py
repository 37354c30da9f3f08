from metarouter.providers.sse import SSEParser


def parse_all(data: bytes, step: int):
    p = SSEParser()
    out = []
    for i in range(0, len(data), step):
        out += p.feed(data[i:i + step])
    out += p.close()
    return [(e.event, e.data) for e in out]


STREAM = (b": keep-alive\n\nevent: message_start\ndata: {\"a\": 1}\n\n"
          b"data: line one\r\ndata: line two\r\n\r\n"
          b"event: ping\rdata: {}\r\r"
          b"data: [DONE]\n\n")
EXPECTED = [("message_start", '{"a": 1}'), (None, "line one\nline two"), ("ping", "{}"), (None, "[DONE]")]


def test_every_chunking_gives_the_same_events():
    for step in (1, 2, 3, 5, 7, 64, len(STREAM)):
        assert parse_all(STREAM, step) == EXPECTED, step


def test_final_event_without_blank_line_counts():
    assert parse_all(b"data: tail", 4) == [(None, "tail")]


def test_utf8_split_across_chunks():
    data = "data: héllo wörld 🙂\n\n".encode()
    assert parse_all(data, 1) == [(None, "héllo wörld 🙂")]

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


def test_an_event_over_the_limit_is_refused_however_it_is_split():
    import pytest

    from metarouter.providers.sse import SSETooLarge

    for data in (b"data: " + b"x" * 5000, b"data: xxxx\n" * 1000):  # one long line; many lines of one event
        p = SSEParser(max_event=4096)
        with pytest.raises(SSETooLarge):
            for i in range(0, len(data), 100):
                p.feed(data[i:i + 100])
    p = SSEParser(max_event=4096)  # many events, each under it: fine
    assert len(p.feed(b"data: " + b"x" * 3000 + b"\n\n" + b"data: " + b"y" * 3000 + b"\n\n")) == 2


def test_lines_split_at_every_byte_and_at_cr_lf():
    data = b"data: a\r\ndata: b\r\n\r\ndata: c\r\rdata: d\n\n"
    for step in range(1, len(data) + 1):
        assert parse_all(data, step) == [(None, "a\nb"), (None, "c"), (None, "d")], step

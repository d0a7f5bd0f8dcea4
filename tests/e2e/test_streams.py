"""``GET …/messages/stream`` as a client sees it (black box; runs against ``API_BASE_URL`` too, e.g. the ingress)."""

from __future__ import annotations

from chat_devtools.sse import Listener, stream_url


def test_a_stream_answers_server_sent_events_of_stored_messages(api, token):
    chat = api.new_chat(token)
    api.wait_chat(token, chat)
    first = api.new_message(token, chat, "one")
    api.wait_message(token, chat, first)
    listener = Listener(stream_url(api.base_url, token, chat, after=0)).start()
    try:
        assert listener.status == 200
        assert listener.headers["content-type"].startswith("text/event-stream")
        second = api.new_message(token, chat, "two")
        listener.wait_numbers([first, second])
        assert [(e.event, e.id, e.data) for e in listener.events] == [
            ("message", str(first), {"message_number": first, "body": "one"}),
            ("message", str(second), {"message_number": second, "body": "two"}),
        ]
        assert listener.retry_ms and listener.retry_ms > 0
    finally:
        listener.close()


def test_resume_with_last_event_id(api, token):
    chat = api.new_chat(token)
    api.wait_chat(token, chat)
    numbers = [api.new_message(token, chat, f"m{i}") for i in range(5)]
    api.wait_message(token, chat, numbers[-1])
    listener = Listener(stream_url(api.base_url, token, chat), last_event_id=str(numbers[1])).start()
    try:
        listener.wait_numbers(numbers[2:])
    finally:
        listener.close()


def test_stream_errors(api, token):
    chat = api.new_chat(token)
    api.wait_chat(token, chat)
    other = api.new_application("someone-else")
    assert api.get(f"/applications/{other}/chats/{chat}/messages/stream").status_code == 404
    assert api.get(f"/applications/{token}/chats/{chat + 1000}/messages/stream").status_code == 404
    resp = api.get(f"/applications/{token}/chats/{chat}/messages/stream", headers={"Last-Event-ID": "x1"})
    assert resp.status_code == 400 and resp.json()["error"]
    assert api.post(f"/applications/{token}/chats/{chat}/messages/stream").status_code == 405

"""Edits are readable at once: a PATCH/PUT updates the row in the request (versioned), so the next GET shows it."""

from __future__ import annotations

import threading
import time

from chat_devtools.http import Api


def test_patch_then_get_shows_the_edit_every_time(api: Api, token: str):
    chat = api.new_chat(token, "v0")
    number = api.new_message(token, chat, "v0")
    api.wait_message(token, chat, number)
    api.wait_chat(token, chat)
    for i in range(1, 101):
        renamed = api.patch(f"/applications/{token}/chats/{chat}", json={"name": f"name {i}"})
        assert renamed.status_code == 200 and renamed.json()["name"] == f"name {i}", renamed.text
        assert api.get(f"/applications/{token}/chats/{chat}").json()["name"] == f"name {i}"
        edited = api.put(f"/applications/{token}/chats/{chat}/messages/{number}", data={"body": f"body {i}"})
        assert edited.status_code == 200 and edited.json() == {"message_number": number, "body": f"body {i}"}
        assert api.get(f"/applications/{token}/chats/{chat}/messages/{number}").json()["body"] == f"body {i}"
        assert api.get(f"/applications/{token}/chats/{chat}/messages").json()[-1]["body"] == f"body {i}"


def test_concurrent_editors_end_on_the_newest_edit(api: Api, token: str):
    chat = api.new_chat(token)
    number = api.new_message(token, chat, "start")
    api.wait_message(token, chat, number)
    path = f"/applications/{token}/chats/{chat}/messages/{number}"
    answered: list[str] = []
    lock = threading.Lock()

    def editor(name: str) -> None:
        client = Api(api.base_url)
        for i in range(20):
            resp = client.patch(path, json={"body": f"{name} {i}"})
            assert resp.status_code == 200, resp.text
            with lock:
                answered.append(resp.json()["body"])  # the row as stored when this edit was applied (or superseded)

    threads = [threading.Thread(target=editor, args=(f"editor{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sent = {f"editor{n} {i}" for n in range(4) for i in range(20)}
    assert set(answered) <= sent
    final = api.get(path).json()["body"]
    # The queued copies of every edit are applied by the writer afterwards: none of them may move the row back.
    api.wait_message(token, chat, number, body=final)
    time.sleep(1.0)  # the writer has applied every queued copy by now
    for _ in range(10):
        assert api.get(path).json()["body"] == final
    final_version = api.patch(path, json={"body": "last word"})
    assert final_version.json()["body"] == "last word"
    assert api.get(path).json()["body"] == "last word"

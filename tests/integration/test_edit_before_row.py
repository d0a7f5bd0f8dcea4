"""An edit of a chat or message whose create was accepted but whose row is not written yet is queued (202),
never lost and never blocking: it is applied after the create, by version."""

from __future__ import annotations

from chat_devtools.http import Api
from chat_devtools.namespace import Namespace
from chat_devtools.processes import System
from tests.conftest import LOG_ROOT


def test_edits_of_rows_not_written_yet_are_queued_and_applied_after_the_create():
    ns = Namespace.create("early")
    system = System(ns, LOG_ROOT / ns.name).start()
    try:
        api = Api(system.base_url)
        token = api.new_application("early edits")
        system.chat_writer.stop()
        system.message_writer.stop()
        chat = api.new_chat(token, "created")
        renamed = api.patch(f"/applications/{token}/chats/{chat}", json={"name": "renamed early"})
        assert renamed.status_code == 202, renamed.text
        assert renamed.json() == {"chat_number": chat, "name": "renamed early", "messages_count": 0}
        number = api.new_message(token, chat, "created")
        edited = api.put(f"/applications/{token}/chats/{chat}/messages/{number}", json={"body": "edited early"})
        assert edited.status_code == 202, edited.text
        assert edited.json() == {"message_number": number, "body": "edited early"}
        assert api.get(f"/applications/{token}/chats/{chat}").status_code == 404  # still not written
        system.chat_writer.start()
        system.message_writer.start()
        assert api.wait_chat(token, chat)["name"] == "renamed early"  # the edit won over the older create
        assert api.wait_message(token, chat, number, body="edited early")["body"] == "edited early"
        # Once the row exists, edits apply in the request again.
        again = api.patch(f"/applications/{token}/chats/{chat}", json={"name": "renamed later"})
        assert again.status_code == 200 and again.json()["name"] == "renamed later"
    finally:
        system.stop()
        ns.destroy()

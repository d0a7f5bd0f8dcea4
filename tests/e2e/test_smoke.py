import requests


def test_create_and_read_back(system, base_url):
    app = requests.post(f"{base_url}/applications", json={"name": "smoke"}, timeout=10)
    assert app.status_code == 201, app.text
    token = app.json()["token"]
    chat = requests.post(f"{base_url}/applications/{token}/chats", json={"name": "c"}, timeout=10)
    assert chat.status_code == 201, chat.text
    assert chat.json() == {"chat_number": 1}

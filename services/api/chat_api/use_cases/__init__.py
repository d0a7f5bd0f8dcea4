"""The API's use cases: every rule of the product, one family per module, none of them knowing HTTP or I/O.

- :mod:`~chat_api.use_cases.tenants` — the tenant rules (unknown/expired 404, suspended 403, request rate 429);
- :mod:`~chat_api.use_cases.applications` — the application lifecycle; :mod:`~chat_api.use_cases.admin` — tenant
  management (works on suspended tenants too);
- :mod:`~chat_api.use_cases.chats`, :mod:`~chat_api.use_cases.messages` — creates (numbered through
  :class:`chat_api.ports.NumbersPort`, then published with a confirm), reads, renames and edits;
- :mod:`~chat_api.use_cases.search`, :mod:`~chat_api.use_cases.streams` — searching a chat, starting a live stream;
- shared steps: :mod:`~chat_api.use_cases.limits` (input limits), :mod:`~chat_api.use_cases.paging`,
  :mod:`~chat_api.use_cases.publishing`, :mod:`~chat_api.use_cases.reads` (may a read go to the replica).

Each use case takes the ports it needs in ``__init__``; :class:`chat_api.services.ChatService` composes them behind
the one object the resources call, and ``chat_api.app`` wires the adapters in.
"""

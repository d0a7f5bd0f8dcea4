"""Falcon resources: parse the request, call one service function, shape the answer."""

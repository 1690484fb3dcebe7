"""What every part of the store (`store.batches`, `.chats`, `.picks`, `.tastes`, serve's queue)
shares: the Store it belongs to, whose lock guards its one connection."""

from __future__ import annotations


class Tables:
    def __init__(self, store):
        self.store = store

    @property
    def db(self):
        return self.store.db

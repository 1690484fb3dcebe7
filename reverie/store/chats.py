"""Chat sessions and their turns: every statement on those tables."""

from __future__ import annotations

import json
import time
from typing import Optional

from reverie.store.tables import Tables


class Chats(Tables):
    """`store.chats`: a session is a name; each turn records the message, how it was read and its run."""

    def session_id(self, name: str, create: bool) -> Optional[int]:
        with self.store.lock:
            rows = list(self.db.query("select id from chat_sessions where name = ?", [name]))
            if rows:
                return rows[0]["id"]
            if not create:
                return None
            now = time.time()
            with self.db.conn:
                return int(self.db["chat_sessions"].insert({"name": name, "created": now, "updated": now}).last_pk)

    def turns(self, name: str) -> list[dict]:
        """The turns of a session, oldest first, with each turn's idea."""
        sid = self.session_id(name, create=False)
        if sid is None:
            return []
        with self.store.lock:
            rows = list(self.db.query("select * from chat_turns where session_id = ? order by turn", [sid]))
        return [{**r, "idea": json.loads(r["request_json"])["idea"]} for r in rows]

    def add_turn(self, session_id: int, **fields) -> int:
        with self.store.lock, self.db.conn:
            turn_id = int(self.db["chat_turns"].insert({"session_id": session_id, "created": time.time(), **fields}).last_pk)
            self.db["chat_sessions"].update(session_id, {"updated": time.time()})
        return turn_id

    def delete_last_turn(self, name: str) -> Optional[dict]:
        """Forget the newest turn of a session (its run and images stay in the lineage)."""
        turns = self.turns(name)
        if not turns:
            return None
        with self.store.lock, self.db.conn:
            self.db.execute("delete from chat_turns where id = ?", [turns[-1]["id"]])
        return turns[-1]

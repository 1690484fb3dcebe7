from reverie.store.db import Store

__all__ = ["Store"]

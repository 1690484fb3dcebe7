"""`POST /v1/images/edits` over real HTTP: the real `openai` client's images.edit(...)."""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import pytest
from PIL import Image

from tests.serve_helpers import ThreadServer

PNG = b"\x89PNG\r\n\x1a\n"


def png_bytes(size=(64, 48), seed=0, mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buf = io.BytesIO()
    Image.fromarray((rng.random(shape) * 255).astype("uint8")).save(buf, format="PNG")
    return buf.getvalue()


def test_the_openai_client_edits_an_image_and_gets_pngs_back(home):
    with ThreadServer(home) as server:
        c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        result = c.images.edit(image=("kite.png", png_bytes(), "image/png"), prompt="make it night", n=2)
        assert len(result.data) == 2
        for item in result.data:
            raw = base64.b64decode(item.b64_json)
            assert raw.startswith(PNG)
            with Image.open(io.BytesIO(raw)) as im:
                assert im.size == (64, 48)  # the source's size
        renders = server.studio.store.renders(result.model_extra["reverie"]["run_id"])
        assert {r.spec.source.instruction for r in renders} == {"make it night"}

        with pytest.raises(openai.BadRequestError) as bad:  # a mask of another size: one line, OpenAI's shape
            c.images.edit(image=("kite.png", png_bytes(), "image/png"), mask=("m.png", png_bytes((32, 32)), "image/png"),
                          prompt="make it night")
        assert "mask is 32x32 but the source is 64x48" in bad.value.body["message"]
        with pytest.raises(openai.BadRequestError) as bad:
            c.images.edit(image=("kite.png", png_bytes(), "image/png"), prompt="  ")
        assert "prompt" in bad.value.body["message"]
        assert not list((home / "uploads").iterdir())  # the uploads are not left behind


def test_a_multipart_post_from_another_site_is_refused(home):
    import httpx

    with ThreadServer(home) as server:
        # What a form on another web site sends: multipart, and the browser's own Sec-Fetch-Site.
        r = httpx.post(server.url + "/v1/images/edits", files={"image": ("a.png", png_bytes(), "image/png")},
                       data={"prompt": "make it night"}, headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403
        assert not (home / "uploads").exists()

"""The JSON response class of every endpoint: orjson encodes the classify results (lists of floats)
several times faster than the standard library."""

from __future__ import annotations

import orjson
from starlette.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)

"""The detail levels a client may ask for per image (OpenAI's ``image_url.detail``).

Defined here, in a module that imports nothing, so that settings, protocol, engines and model
families share the one definition.
"""

from typing import Literal

Detail = Literal["low", "high", "auto"]

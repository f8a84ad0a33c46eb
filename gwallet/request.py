"""The request class of the app: strict JSON bodies.

Litestar converts request bodies in msgspec's *lax* mode, which turns ``"12350"`` and
``12350.0`` into the integer 12350. The API contract says a string or a float where an integer
(money) is expected is a 422, so bodies are decoded here, strictly, straight into the type the
handler declares for ``data``. Litestar then receives an instance of that type and passes it
through unchanged. Handlers keep declaring ``data: JSONBody[SomeStruct]`` as usual, so the
OpenAPI schema still documents the body.

Unknown fields are refused too: every Struct a body may contain must be declared with
``forbid_unknown_fields=True`` (simplest: subclass ``RequestBody``). ``check_request_bodies``
refuses to build an app where one is not, so the mistake cannot reach production.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
import msgspec.inspect
from litestar import Request
from litestar.exceptions import SerializationException

from gwallet.problems import FieldError, InvalidRequest, MalformedJson


class RequestBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of request bodies: a field the client sends that the API does not know is a 422."""


class LenientRequestBody(TypeError):
    """A request body type would silently ignore unknown fields."""


def check_request_bodies(route_handlers: Iterable[Any]) -> None:
    """Raise if a handler's body type contains a Struct that accepts unknown fields."""
    for handler in route_handlers:
        signature = getattr(handler, "parsed_fn_signature", None)
        field = signature.parameters.get("data") if signature is not None else None
        if field is None:
            continue
        try:
            info = msgspec.inspect.type_info(field.annotation)
        except TypeError:
            continue  # not a msgspec type; Litestar decodes it
        for struct in _structs(info):
            if not struct.forbid_unknown_fields:
                raise LenientRequestBody(
                    f"{handler}: body type {struct.cls.__qualname__} must be declared with "
                    "forbid_unknown_fields=True (or subclass gwallet.request.RequestBody)"
                )


def _structs(info: msgspec.inspect.Type, seen: set[type] | None = None) -> Iterator[Any]:
    seen = set() if seen is None else seen
    if isinstance(info, msgspec.inspect.StructType):
        if info.cls in seen:
            return
        seen.add(info.cls)
        yield info
        for field in info.fields:
            yield from _structs(field.type, seen)
        return
    for attribute in ("item_type", "key_type", "value_type"):
        if (inner := getattr(info, attribute, None)) is not None:
            yield from _structs(inner, seen)
    for inner in getattr(info, "types", None) or ():  # unions and fixed tuples
        yield from _structs(inner, seen)


class StrictRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        decoder = _decoder_for(self.route_handler)
        if decoder is None:
            try:
                return await super().json()
            except SerializationException as exc:
                raise MalformedJson() from exc
            except RecursionError:
                raise MalformedJson(_TOO_DEEP) from None
        body = await self.body()
        try:
            return decoder.decode(body)
        except msgspec.ValidationError as exc:
            error = field_error(str(exc))
            raise InvalidRequest(f"{error.field}: {error.message}", errors=[error]) from None
        except msgspec.DecodeError:
            raise MalformedJson() from None
        except RecursionError:  # msgspec's answer to JSON nested ~1000 levels deep
            raise MalformedJson(_TOO_DEEP) from None


_TOO_DEEP = "The request body is nested too deeply."


def _decoder_for(route_handler: Any) -> msgspec.json.Decoder[Any] | None:
    signature = getattr(route_handler, "parsed_fn_signature", None)
    field = signature.parameters.get("data") if signature is not None else None
    if field is None:
        return None
    try:
        return _decoder_for_type(field.annotation)
    except TypeError:  # unhashable, or a type msgspec cannot decode: leave it to Litestar
        return None


@functools.lru_cache(maxsize=1024)
def _decoder_for_type(annotation: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(annotation, strict=True)


_AT_PATH = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `(?P<name>[^`]+)`")


def field_error(message: str) -> FieldError:
    """Turn msgspec's "Expected `int`, got `str` - at `$.amount`" into a named field error."""
    match = _AT_PATH.match(message)
    assert match is not None  # the pattern matches any string
    text, path = match["message"], (match["path"] or "").lstrip(".")
    named = _NAMED_FIELD.search(text)
    if named:
        path = f"{path}.{named['name']}" if path else named["name"]
    return FieldError(field=path or "(body)", message=text)

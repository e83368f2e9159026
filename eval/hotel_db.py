"""`search_hotels` over `hotel_db.json`, with the data set's semantics.

A hotel matches when its name contains `name`, its type equals `type`, every requested
facility is a substring of one of its facilities (`早餐服务` matches `早餐服务免费`), and its
price and rating lie in the inclusive ranges; a hotel without a price (or rating) fails any
constraint on it. At most `limit` matches are returned, in database order.
"""
from __future__ import annotations

import json
import operator
from pathlib import Path
from typing import Any

from data.errors import DataError

ARGUMENTS = {"name": str, "type": str, "facilities": list, "price_range_lower": float, "price_range_upper": float,
             "rating_range_lower": float, "rating_range_upper": float}
# argument -> (hotel field, test the field's value must pass against the argument)
RANGES = {"price_range_lower": ("price", operator.ge), "price_range_upper": ("price", operator.le),
          "rating_range_lower": ("rating", operator.ge), "rating_range_upper": ("rating", operator.le)}


class QueryError(ValueError):
    """Arguments the function cannot run with; the chat answers them with an error observation."""


def load_db(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), None, None, "file not found (chat.db)")
    hotels = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(hotels, list) or not all(isinstance(h, dict) and "name" in h for h in hotels):
        raise DataError(str(path), None, None, "must be a JSON list of hotels with a name")
    return hotels


def check_arguments(arguments: dict[str, Any]) -> None:
    """Raise QueryError for unknown keys or values of the wrong type."""
    for key, value in arguments.items():
        want = ARGUMENTS.get(key)
        if want is None:
            raise QueryError(f"unknown argument {key!r}; allowed: {', '.join(ARGUMENTS)}")
        if want is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif want is list:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, want)
        if not ok:
            kind = {float: "a number", list: "a list of strings", str: "a string"}[want]
            raise QueryError(f"argument {key!r} must be {kind}, got {json.dumps(value, ensure_ascii=False)}")


def matches(hotel: dict[str, Any], arguments: dict[str, Any]) -> bool:
    if "name" in arguments and arguments["name"] not in hotel["name"]:
        return False
    if "type" in arguments and arguments["type"] != hotel.get("type"):
        return False
    facilities = hotel.get("facilities") or []
    if not all(any(wanted in offered for offered in facilities) for wanted in arguments.get("facilities", [])):
        return False
    for key, (field, within) in RANGES.items():
        if key in arguments:
            value = hotel.get(field)
            if value is None or not within(value, arguments[key]):
                return False
    return True


def query(db: list[dict[str, Any]], arguments: dict[str, Any], limit: int | None = 3) -> list[dict[str, Any]]:
    """The first `limit` hotels (all when None) that match; QueryError for malformed arguments."""
    check_arguments(arguments)
    found = [hotel for hotel in db if matches(hotel, arguments)]
    return found if limit is None else found[:limit]

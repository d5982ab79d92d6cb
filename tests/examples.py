"""Output types and tools the tests share: the JSON-mode issue's Character and the model cards' tools."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Character(BaseModel):
    name: str
    species: Literal["human", "saiyan", "namekian"]
    age: int = Field(ge=0)
    attacks: list[str]


def get_current_temperature(location: str, unit: Literal["celsius", "fahrenheit"]) -> float:
    """Get the current temperature at a location.

    Args:
        location: The location, in the format "City, Country"
        unit: The unit to return the temperature in.
    """
    return 22.0


def get_stock_fundamentals(symbol: str) -> dict:
    """Get fundamental data for a stock.

    Args:
        symbol: The stock symbol, e.g. "TSLA".
    """
    return {"symbol": symbol, "pe_ratio": 50.1}

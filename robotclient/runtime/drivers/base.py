"""The one small interface every robot driver implements, plus the LED conventions they share.

Callers never talk to a driver directly: they wrap it in ``SafeRobot`` (``safety.py``), which
clamps commands and runs the watchdog, so drivers only translate already-safe commands.
"""

from __future__ import annotations

import ipaddress
import zlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from robotclient.runtime.model import Command, HitEvent

RGB = tuple[int, int, int]

NEUTRAL_COLOR: RGB = (255, 255, 255)
"""LED colour when no edge has answered yet (empty edge): plain white, never mistaken for an edge's colour."""

HIT_COLOR: RGB = (255, 0, 0)

MIN_LED_PEAK = 64
"""A colour whose brightest channel is below this is invisible on the chassis LEDs (see ``visible_color``)."""

ANNOUNCE_EVENTS = ("acquired", "lost")


class RobotUnavailable(RuntimeError):
    """The robot cannot be used: its SDK is missing or no robot answered. The message says what to do."""


@runtime_checkable
class RobotDriver(Protocol):
    """What the follower needs from a robot; commands arrive already clamped (``SpeedLimits.clamp``)."""

    name: str

    def drive(self, cmd: Command) -> None:
        """Set the chassis body velocity until the next command."""

    def stop(self) -> None:
        """Zero speed now."""

    def show_state(self, state: str) -> None:
        """LED effect for a follow state (see ``STATE_LEDS``)."""

    def show_edge(self, edge: str) -> None:
        """LED colour for the serving edge (dotted IPv4, or a hostname when there is no IPv4)."""

    def announce(self, event: str) -> None:
        """Sound for "acquired" / "lost"; must never block the caller."""

    def take_hits(self) -> list[HitEvent]:
        """Armor hits since the previous call (drained)."""

    def telemetry(self) -> dict[str, float]:
        """Latest position/velocity readings, ``{}`` when none."""

    def close(self) -> None:
        """Release the robot; safe to call twice."""


@dataclass(frozen=True)
class LedStyle:
    """How the chassis LEDs look in one state: an SDK effect name, its flash frequency, and a fixed colour or None."""

    effect: str
    """One of "on", "off", "flash", "breath", "scrolling" (the values of the SDK's ``led.EFFECT_*``)."""
    freq: int = 1
    """Flashes per second for "flash" (the SDK accepts 1..10 and ignores it for other effects)."""
    color: RGB | None = None
    """None: the serving edge's colour, so the effect says the state and the colour says who serves."""


STATE_LEDS: dict[str, LedStyle] = {
    "follow": LedStyle("on"),
    "search": LedStyle("flash", freq=6),
    "idle": LedStyle("breath"),
    "wakeup": LedStyle("flash", freq=1),
    "explore": LedStyle("scrolling"),
    "hit": LedStyle("flash", freq=10, color=HIT_COLOR),
}
"""The one table of LED effects per follow state (names as ``robotclient.runtime.statemachine.State`` values)."""


def led_style(state: str) -> LedStyle:
    """The style for a state; an unknown state is a programming error, so it fails loudly in tests."""
    try:
        return STATE_LEDS[state]
    except KeyError:
        raise ValueError(f"unknown robot state {state!r}; known: {', '.join(sorted(STATE_LEDS))}") from None


def edge_color(edge: str) -> RGB:
    """The original LIQUID EDGE colour of a serving edge, so robots keep their familiar colours.

    For an IPv4 address (as a 32-bit integer) the original took one BSD ``rand()`` step,
    ``(1103515245 * ipv4 + 12345) % 0xffffffff`` (sic: modulo 2**32 - 1, kept as is), and read
    r, g, b from its low three bytes. A hostname uses its CRC-32 in place of the integer so that
    it is stable across runs (``hash()`` is salted per process). An empty edge gives ``NEUTRAL_COLOR``.
    The result can be very dark (the original did not care); drivers pass it through
    ``visible_color`` before lighting LEDs, and this function stays faithful to the original.
    """
    if not edge:
        return NEUTRAL_COLOR
    try:
        seed = int(ipaddress.IPv4Address(edge))
    except ValueError:
        seed = zlib.crc32(edge.encode("utf-8"))
    bsdrand = (1103515245 * seed + 12345) % 0xFFFFFFFF
    return bsdrand & 0xFF, (bsdrand >> 8) & 0xFF, (bsdrand >> 16) & 0xFF


def visible_color(rgb: RGB, min_peak: int = MIN_LED_PEAK) -> RGB:
    """Scale a too-dark colour up (same hue) until its brightest channel reaches ``min_peak``; black becomes neutral.

    Decision: an edge whose LCG colour is near black would look like "LEDs off", which the
    operator reads as a fault, so the hue is kept and only the brightness is lifted.
    """
    peak = max(rgb)
    if peak >= min_peak:
        return rgb
    if peak == 0:
        return NEUTRAL_COLOR
    scale = min_peak / peak
    r, g, b = (min(255, round(c * scale)) for c in rgb)
    return r, g, b


def led_color(style: LedStyle, edge: str) -> RGB:
    """The colour to light for a state style while ``edge`` serves."""
    return style.color if style.color is not None else visible_color(edge_color(edge))


def check_event(event: str) -> str:
    """Reject unknown announcements early (a typo would otherwise be a silent robot)."""
    if event not in ANNOUNCE_EVENTS:
        raise ValueError(f"unknown announcement {event!r}; known: {', '.join(ANNOUNCE_EVENTS)}")
    return event

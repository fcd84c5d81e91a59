"""The station's stages by name: how each thread is built (factory) and how a fresh one takes over (adopt).

`Station` registers one `StageSpec` per stage as it starts and builds every stage thread through it;
the supervisor restarts a dead stage through the same spec, so a restarted thread is built exactly
like the first one: `factory()` makes a fresh, unstarted thread from the station's current objects
and config, `adopt(new, dead)` lets it take over what the dead one held and wires it in where others
reach it (the reject scheduler's output, say), then the registry starts it. A stage whose thread a
component owns (a PLC handshake driver's heartbeat) names that thread through `current`; the
registry then holds no thread of its own for it, and `adopt` hands the new one to the component.
Restarts and live swaps (a reload's new output worker) take one lock, so they never cross.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from station.stage import Stage

log = logging.getLogger(__name__)

S = TypeVar("S", bound=Stage)


def adopt_state(new: Stage, dead: Stage) -> None:
    """The default adopt: the new thread takes over the dead one's state (`Stage.adopt`)."""
    new.adopt(dead)


@dataclass(frozen=True)
class StageSpec:
    factory: Callable[[], Stage]                       # a fresh, unstarted thread
    adopt: Callable[[Stage, Stage], None] = adopt_state  # (new, dead): take over and wire in, before start
    current: Callable[[], Stage | None] | None = None  # the live thread when a component owns it


class StageRegistry:
    def __init__(self) -> None:
        self._specs: dict[str, StageSpec] = {}
        self._threads: dict[str, Stage] = {}
        self._lock = threading.RLock()

    def register(self, name: str, spec: StageSpec) -> None:
        with self._lock:
            if name in self._specs:
                raise ValueError(f"stage {name!r} is registered already")
            self._specs[name] = spec

    def build(self, name: str) -> Stage:
        """A first thread for a registered stage (not started: the station starts stages in its order)."""
        with self._lock:
            spec = self._specs[name]
            if spec.current is not None:
                raise ValueError(f"stage {name!r} is built by the component that owns it")
            thread = spec.factory()
            self._threads[name] = thread
            return thread

    def names(self) -> list[str]:
        """The registered stages, in registration order."""
        with self._lock:
            return list(self._specs)

    def get(self, name: str) -> Stage | None:
        with self._lock:
            spec = self._specs.get(name)
            if spec is not None and spec.current is not None:
                return spec.current()
            return self._threads.get(name)

    def threads(self) -> dict[str, Stage]:
        """Every stage's thread by name, in registration order (stages not running yet are left out)."""
        with self._lock:
            found = {name: self.get(name) for name in self._specs}
        return {name: thread for name, thread in found.items() if thread is not None}

    def replace(self, name: str, new: Stage) -> Stage | None:
        """Put a thread the caller built and started in the stage's place (a live reload swapping an
        output); return the one it replaces, for the caller to finish and stop."""
        with self._lock:
            if name not in self._specs or self._specs[name].current is not None:
                raise KeyError(name)
            old = self._threads.get(name)
            self._threads[name] = new
            return old

    def restart(self, name: str) -> Stage:
        """Replace the stage's dead thread by a fresh one from its spec, which takes over, and start it.

        Only a thread that has exited is replaced: a live one, even a hung one, would end up doubled (two
        threads on one camera or one queue). Raises RuntimeError when the stage cannot be restarted.
        """
        with self._lock:
            spec = self._specs.get(name)
            if spec is None:
                raise RuntimeError(f"no stage {name!r} is registered")
            dead = self.get(name)
            if dead is None:
                raise RuntimeError(f"stage {name!r} has no thread to restart")
            if dead.is_alive():
                raise RuntimeError(f"stage {name!r} is still running; only a dead stage is restarted")
            new = spec.factory()
            spec.adopt(new, dead)
            if spec.current is None:
                self._threads[name] = new
            new.start()
        log.info("stage %s: a new thread took over from the one that exited", name)
        return new


class StageSlot(Generic[S]):
    """A read-only attribute holding the current thread of one registered stage, for an owner object with
    a `stage_registry`: `capture = StageSlot("capture", CaptureThread)` reads as the live capture thread
    (None before the stage is built), whichever restart or swap put it there."""

    def __init__(self, name: str, kind: type[S]) -> None:
        self.name = name
        self.kind = kind

    def __get__(self, owner: Any, owner_type: type | None = None) -> S | None:
        thread = owner.stage_registry.get(self.name)
        assert thread is None or isinstance(thread, self.kind), f"stage {self.name} is a {type(thread).__name__}"
        return thread

"""Operator-facing words for the names the station writes: verdict reasons, alarms, actuator results.

The station and its log speak in short names (`bad_frame`, `reject_output_stuck`, ...). The HMI shows
each with a title and one sentence saying what happened and what to do. The tables are keyed by
name and read generically: a name the HMI does not know yet (a newer station) is shown as it is,
never hidden and never an error.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Explanation:
    name: str
    title: str
    text: str


REASONS: dict[str, tuple[str, str]] = {
    "model": ("Decided by the model",
              "The classifier scored the part; p_defect at or above the threshold rejects it."),
    "timeout": ("No verdict in time (fail-safe)",
                "The model did not answer before the deadline, so the part got the fail-safe verdict. "
                "Frequent timeouts: the station PC is overloaded."),
    "overrun": ("Station overloaded (fail-safe)",
                "Parts arrived faster than the model could score them and the queue was full; the part got "
                "the fail-safe verdict. Check the line speed against the station's rate."),
    "bad_frame": ("Camera image unusable (fail-safe)",
                  "The camera delivered a broken, incomplete or wrong-sized image, or none at all; the part got "
                  "the fail-safe verdict. Check the camera, its cable and its trigger."),
    "model_error": ("Model failed on this part (fail-safe)",
                    "The classifier raised an error on this image; the part got the fail-safe verdict. "
                    "Call the engineer if it repeats."),
    "shutdown": ("Station stopped (fail-safe)",
                 "The station was stopping before the part could be scored; the part got the fail-safe verdict."),
    "image_check": ("Image outside the validated range (fail-safe)",
                    "Lighting, contrast, focus, part position or size of this image is outside what the model "
                    "was validated on, so the model's answer cannot be trusted; the part got the fail-safe "
                    "verdict. Check the lights, the lens and how the part lies under the camera."),
}

ALARMS: dict[str, tuple[str, str]] = {
    "camera": ("Camera lost", "The camera does not deliver images; the station reopens it by itself. "
                              "Check power, cable and network if it stays."),
    "reject_actuator": ("Reject output unreachable",
                        "The PLC or relay that drives the ejector does not answer; rejects may not be ejected. "
                        "Check the PLC link."),
    "alarm_output": ("Alarm lamp unreachable", "The stack light output does not answer."),
    "reject_output_stuck": ("Ejector may be stuck on",
                            "The reject output could not be switched off; the station keeps retrying. "
                            "Check the ejector and the PLC."),
    "plc_slow": ("PLC answers slowly",
                 "The PLC takes too long to confirm commands; rejects may fire late. Check the PLC load and "
                 "the network."),
    "tracelog": ("Trace log cannot be written",
                 "The disk is full or read-only; verdicts are held in memory and decisions go on. Free disk space."),
    "tracelog_images": ("Images cannot be saved", "Part images cannot be written (disk full or read-only)."),
    "image_quality": ("Images out of range",
                      "A run of images is outside the validated lighting, focus or position range; every such "
                      "part is rejected. Check lights, lens and part placement; stop the line if it stays."),
    "drift": ("Images drifting", "The images are slowly moving away from what the model was validated on. "
                                 "Call the engineer."),
    "stage_hung": ("Station stage hung", "A part of the station stopped moving; systemd restarts the station."),
    "supervisor": ("Station gave up restarting",
                   "A part of the station crashed too often; the station is unhealthy. Call the engineer."),
}

ACTUATOR_RESULTS: dict[str, tuple[str, str]] = {
    "none": ("No command", "No ejector command was needed (a good part), or none has been reported yet."),
    "acknowledged": ("Ejected", "The output confirmed the command in time."),
    "late": ("Ejected late", "The output confirmed the command, but later than the tolerance."),
    "failed": ("Command failed", "The output answered with an error or the link failed: the part may not "
                                 "have been ejected. Pull it by hand."),
    "not_sent": ("Not sent", "The output link was down: the part was not ejected. Pull it by hand."),
    "logged": ("Logged only", "The station drives no output (log actuator)."),
    "unknown": ("Outcome unknown", "The station restarted while the command was in flight: whether the part "
                                   "was ejected is unknown. Check it by hand."),
}

REVIEWS: dict[str, tuple[str, str]] = {
    "true_defect": ("True defect", "The reject was right: the part is defective."),
    "false_reject": ("False reject", "The part is good: the station rejected it wrongly."),
    "cant_tell": ("Can't tell", "The image does not show enough to say."),
    "escape": ("Escape", "A defective part the station passed."),
}


def _lookup(table: dict[str, tuple[str, str]], name: str | None) -> Explanation:
    name = name or ""
    title, text = table.get(name, (name, ""))
    return Explanation(name=name, title=title, text=text)


def reason(name: str | None) -> Explanation:
    return _lookup(REASONS, name)


def alarm(name: str | None) -> Explanation:
    return _lookup(ALARMS, name)


def actuator_result(name: str | None) -> Explanation:
    return _lookup(ACTUATOR_RESULTS, name)


def review(name: str | None) -> Explanation:
    return _lookup(REVIEWS, name)

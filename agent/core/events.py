"""Violation events and active violations in the AWS IoT API shapes (ViolationEvent,
ActiveViolation); times are epoch seconds."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    IN_ALARM = "in-alarm"
    ALARM_CLEARED = "alarm-cleared"
    ALARM_INVALIDATED = "alarm-invalidated"


UNKNOWN = "UNKNOWN"  # verificationState until someone sets it


@dataclass(frozen=True, slots=True)
class ViolationEvent:
    violation_id: str  # shared by an alarm's in-alarm and its end event
    thing_name: str
    security_profile_name: str
    behavior: Mapping[str, Any]  # as given in the profile
    metric_value: Mapping[str, Any]
    violation_event_type: EventType
    violation_event_time: float
    verification_state: str = UNKNOWN
    # violationEventAdditionalInfo: {"confidenceLevel": ...} for ML behaviors
    additional_info: Mapping[str, Any] | None = None

    @property
    def suppressed(self) -> bool:
        return bool(self.behavior.get("suppressAlerts", False))

    def to_json(self) -> dict[str, Any]:
        return {
            "violationId": self.violation_id,
            "thingName": self.thing_name,
            "securityProfileName": self.security_profile_name,
            "behavior": copy.deepcopy(dict(self.behavior)),
            "metricValue": copy.deepcopy(dict(self.metric_value)),
            **_additional(self.additional_info),
            "violationEventType": self.violation_event_type.value,
            "verificationState": self.verification_state,
            "violationEventTime": self.violation_event_time,
        }


@dataclass(frozen=True, slots=True)
class ActiveViolation:
    violation_id: str
    thing_name: str
    security_profile_name: str
    behavior: Mapping[str, Any]
    last_violation_value: Mapping[str, Any]
    last_violation_time: float
    violation_start_time: float
    verification_state: str = UNKNOWN
    additional_info: Mapping[str, Any] | None = None

    @property
    def suppressed(self) -> bool:
        return bool(self.behavior.get("suppressAlerts", False))

    def to_json(self) -> dict[str, Any]:
        return {
            "violationId": self.violation_id,
            "thingName": self.thing_name,
            "securityProfileName": self.security_profile_name,
            "behavior": copy.deepcopy(dict(self.behavior)),
            "lastViolationValue": copy.deepcopy(dict(self.last_violation_value)),
            **_additional(self.additional_info),
            "lastViolationTime": self.last_violation_time,
            "violationStartTime": self.violation_start_time,
            "verificationState": self.verification_state,
        }


def _additional(info: Mapping[str, Any] | None) -> dict[str, Any]:
    return {} if info is None else {"violationEventAdditionalInfo": dict(info)}

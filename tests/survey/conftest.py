"""A folder of Observations with a Chinese hospital's local codes and unit spellings (spec v2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CN_LAB = "http://hospital.example.cn/lab"
AS_OF = "2026-06-15"
#: identifiers and values the outputs must never show
PATIENT_ID = "cn-patient-7"
PATIENT_NAME = "Zhangsan"
HGB_VALUE = 131.5
#: the unit spelling of Chinese laboratory systems, with U+00D7 (trial-spec v2)
TIMES_10_9 = "\u00d710^9/L"


def _obs(n: int, code: str, display: str, value: float, unit: str | None) -> dict[str, object]:
    """Observation n, dated n days before 2026-06-11 (one value per day: none disagree)."""
    quantity: dict[str, object] = {"value": value}
    if unit is not None:
        quantity["unit"] = unit
    return {
        "resourceType": "Observation",
        "id": f"cn-obs-{n}",
        "status": "final",
        "code": {"coding": [{"system": CN_LAB, "code": code, "display": display}]},
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "effectiveDateTime": f"2026-06-{11 - n:02d}",
        "valueQuantity": quantity,
    }


def write_cn_folder(folder: Path) -> Path:
    """One HCC patient, local lab codes: HGB 血红蛋白 in g/L (x3), PLT 血小板 in \u00d710^9/L (x2),
    WBC 白细胞 in a unit no table reads (个/L), and a code with no words, XYZ9 in g/L."""
    folder.mkdir(parents=True, exist_ok=True)
    patient = {
        "resourceType": "Patient",
        "id": PATIENT_ID,
        "name": [{"family": PATIENT_NAME}],
        "gender": "male",
        "birthDate": "1960-03-04",
    }
    condition = {
        "resourceType": "Condition",
        "id": "cn-hcc",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "recurrence",
                }
            ]
        },
        "verificationStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "code": "confirmed",
                }
            ]
        },
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "C22.0"}]},
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "onsetDateTime": "2026-04-21",
    }
    observations = [
        _obs(1, "HGB", "血红蛋白", HGB_VALUE, "g/L"),
        _obs(2, "HGB", "血红蛋白", 128.0, "g/L"),
        _obs(3, "HGB", "血红蛋白", 125.0, "g/L"),
        _obs(4, "PLT", "血小板", 180.0, TIMES_10_9),
        _obs(5, "PLT", "血小板", 175.0, TIMES_10_9),
        _obs(6, "WBC", "白细胞", 5.1, "个/L"),
        _obs(7, "XYZ9", "", 40.0, "g/L"),
    ]
    lines = {
        "Patient.ndjson": [patient],
        "Condition.ndjson": [condition],
        "Observation.ndjson": observations,
        "Procedure.ndjson": [
            {
                "resourceType": "Procedure",
                "id": "cn-proc",
                "status": "completed",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "80146002"}]},
                "subject": {"reference": f"Patient/{PATIENT_ID}"},
                "performedDateTime": "2025-01-01",
            }
        ],
    }
    for name, resources in lines.items():
        text = "\n".join(json.dumps(r, ensure_ascii=False) for r in resources) + "\n"
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def cn_folder(tmp_path: Path) -> Path:
    return write_cn_folder(tmp_path / "cn")

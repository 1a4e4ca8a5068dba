"""Finding the checkpoint a resumed training starts from."""

from __future__ import annotations

import json


def test_a_checkpoint_killed_while_writing_its_metadata_is_dropped(tmp_path):
    """SIGKILL during a save left an empty `metadata.json` (seen in CI): levanter's discovery
    raised on it, so the resumed attempt failed."""
    from tasks.lm.checkpoints import latest_checkpoint

    good, broken = tmp_path / "step-10", tmp_path / "step-20"
    good.mkdir()
    (good / "metadata.json").write_text(
        json.dumps({"step": 10, "timestamp": "2026-11-30T10:00:00"})
    )
    broken.mkdir()
    (broken / "metadata.json").write_text("")
    assert latest_checkpoint(str(tmp_path)) == (str(good), 10)
    assert not broken.exists()

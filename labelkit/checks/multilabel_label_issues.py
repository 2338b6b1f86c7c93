"""Multi-label label issues: rows with a tag that is given but improbable, or missing but probable."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from labelkit.checks._task_common import display_labels, tag_lists
from labelkit.checks.base import Check, CheckContext, CheckResult, register

MAX_TAGS_IN_REASON = 3


@register
class MultilabelLabelIssues(Check):
    """Confident learning per tag (cleanlab's multi-label module) over one-vs-rest out-of-sample probabilities.

    ``issues`` for a multi-label workspace computes the verdicts once
    (:func:`labelkit.tasks.multilabel.find_multilabel_label_issues`, in ``ctx.label_issues``; the
    tags and the given multi-hot matrix in ``ctx.tags`` / ``ctx.tag_labels``); this check names them per row (which tags of the set are suspect, and in which direction),
    counts them and writes the evidence: the probe's out-of-sample probability of each suspect tag.

    References
    ----------
    Thyagarajan, Snorrason, Northcutt, Mueller. "Identifying Incorrect Annotations in Multi-Label
    Classification Data". arXiv:2211.13895, 2022.
    """

    name = "multilabel_label_issues"
    title = "Multi-label issues"
    description = ("Rows with a tag given that the out-of-sample probe finds improbable, or a tag missing that it "
                   "finds probable (confident learning per tag).")
    needs = ("probs",)
    tasks = ("multilabel",)
    metrics = {"multilabel_health_score": "cleanlab's overall multi-label health: 1 - share of rows with a suspect tag",
               "multilabel_min_tag_quality": "lowest per-tag quality (Jaccard of the rows given the tag and the rows "
                                             "that should have it)",
               "multilabel_suspect_given": "tags given to a row that look wrong (remove)",
               "multilabel_suspect_missing": "tags missing from a row that look right (add)"}
    columns = {"is_label_issue": "at least one tag of the row is suspect",
               "label_quality": "cleanlab multi-label label quality in [0, 1], lower is worse",
               "suggested_label": "the given tags with the suspect ones flipped, joined by '; '",
               "suggested_labels": "the given tags with the suspect ones flipped (list)",
               "suspect_labels": "the row's suspect tags, given or missing (list)",
               "suspect_given_labels": "tags given to the row but improbable (list)",
               "suspect_missing_labels": "tags missing from the row but probable (list)"}
    flag = "is_label_issue"
    score = "label_quality"
    order = 10
    default_columns = {"is_label_issue": "false", "label_quality": "null_float", "suggested_label": "null_string"}
    prunable = True
    baseline_title = "label issue"
    params = {"filter_by": "cleanlab's filter_by, per tag", "rank_by": "cleanlab's multi-label rank_by"}

    def run(self, ctx: CheckContext) -> CheckResult:
        tags, Y, found = ctx.tags, np.asarray(ctx.tag_labels, bool), ctx.label_issues
        flags = np.asarray(found["is_label_issue"], bool)
        suspect = np.asarray(found["suspect"], bool)
        suggested = np.asarray(found["suggested"], bool)
        probs = ctx.pred_probs
        reasons = {}
        rows = np.flatnonzero(flags)
        if len(rows):
            sub_s, sub_y, sub_p = suspect[rows], Y[rows], probs[rows]
            for j, row in enumerate(rows.tolist()):
                parts = []
                for k in np.flatnonzero(sub_s[j] & sub_y[j])[:MAX_TAGS_IN_REASON]:
                    parts.append(f"tagged {tags[k]!r} but probe gives it {sub_p[j, k]:.2f}")
                for k in np.flatnonzero(sub_s[j] & ~sub_y[j])[:MAX_TAGS_IN_REASON]:
                    parts.append(f"{tags[k]!r} missing but probe gives it {sub_p[j, k]:.2f}")
                extra = int(sub_s[j].sum()) - len(parts)
                reasons[row] = "; ".join(parts) + (f"; {extra} more tag(s)" if extra > 0 else "") + " (out of sample)"
        per_tag = found["per_tag"]
        order = np.argsort(per_tag["quality"], kind="stable")
        table = {"title": "Tags by quality (worst first)",
                 "columns": ["tag", "rows", "given but suspect", "missing but suspect", "tag quality"],
                 "rows": [[tags[k], int(per_tag["count"][k]), int(per_tag["given_suspect"][k]),
                           int(per_tag["missing_suspect"][k]), round(float(per_tag["quality"][k]), 4)]
                          for k in order.tolist()[:50]]}
        suggested_lists = tag_lists(suggested, tags)
        return CheckResult(
            columns={"is_label_issue": flags,
                     "label_quality": pa.array(np.asarray(found["label_quality"], np.float32)),
                     "suggested_label": display_labels(suggested_lists),
                     "suggested_labels": suggested_lists,
                     "suspect_labels": tag_lists(suspect, tags),
                     "suspect_given_labels": tag_lists(suspect & Y, tags),
                     "suspect_missing_labels": tag_lists(suspect & ~Y, tags)},
            metrics={"multilabel_health_score": found["health_score"],
                     "multilabel_min_tag_quality": float(per_tag["quality"].min()) if len(tags) else None,
                     "multilabel_suspect_given": int((suspect & Y).sum()),
                     "multilabel_suspect_missing": int((suspect & ~Y).sum())},
            reasons=reasons, tables=[table])

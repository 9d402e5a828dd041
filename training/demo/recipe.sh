#!/usr/bin/env bash
# The demo model (models/demo/), from scratch, with the project's own commands only:
#   1. `efficientsam3 world` writes SA-Co-style concept data (training) and held-out rosbags (evaluation);
#   2. stage3 trains a small SAM3-architecture teacher ("demo-teacher") from random weights;
#   3. stage1-image distils the teacher's trunk into the slim EfficientViT student ("demo-student");
#   4. stage3 fine-tunes the student end to end on the world's ground truth (several phrases of
#      one image per batch, so each image is encoded once for all of them) at 168 px, then a short
#      stage3 finish at the 336 px input it ships with, adding the box-scoring head
#      (student_stage3_336.yaml; until session 29 a 224 px finish came between the two, now
#      experiments/student_stage3_224.yaml);
#   5. stage2 trains the student's Perceiver-memory tracker on SA-V-style world clips (the whole
#      tracker, on the clips' masks: no SAM3 tracker exists to distil from in this world), on the
#      final student's trunk, the one it is deployed with (stage 3 does not read the tracker);
#   6. `efficientsam3 eval-bag --gt` scores teacher and student (without and with the memory
#      tracker) on held-out world sequences (seeds the training data never uses;
#      `efficientsam3 demo` itself uses seed 90210);
#   7. the student and tracker exports are copied to models/demo/ (DEMO_INSTALL=0 skips this).
#
# Usage: training/demo/recipe.sh [WORK_DIR]      (default: out/demo, git-ignored; rerunning resumes)
#        with the package installed (`efficientsam3`, `efficientsam3-train` on PATH).
# Env:   DEMO_THREADS (2: torch threads; the stages run one after another, so on an idle 2-core
#        machine 2 is the fast setting; use 1 if something else keeps a core busy; the weights differ
#        in the last bits with another thread count: the shipped files were made with 2, but for the 336 px finish, 1), DEMO_INSTALL (1), DEMO_SCALE (1.0: multiplies every stage's step count, for quick runs),
#        DEMO_DATA_SCALE (1.0: multiplies the number of images, clips and bag frames; for smoke
#        tests, in a fresh WORK_DIR: data already written is not rewritten),
#        DEMO_OPTIMIZER (auto: optim.implementation of every stage, i.e. AdamW's fused kernel on
#        the CPU; `for-loop` is torch's default update, see README "AdamW's update"). The shipped
#        student up to its 224 px finish was made with `for-loop` by the code up to commit 3326deb:
#        stage 3 computes its losses batch-wide since, which sums in another order, so no later
#        code reproduces it bit for bit; its 336 px finish and the tracker ran on later code with
#        `auto` (models/demo/MODEL_CARD.md). The CPU steps run channels-last since
#        (run.memory_format: auto, README "Channels-last on the CPU"), NCHW before: other last bits again.
# Measured on 2 shared CPU cores: see models/demo/MODEL_CARD.md.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CONF="$REPO/training/demo"
WORK="${1:-$REPO/out/demo}"
THREADS="${DEMO_THREADS:-2}"
SCALE="${DEMO_SCALE:-1.0}"
DATA_SCALE="${DEMO_DATA_SCALE:-1.0}"
OPTIMIZER="${DEMO_OPTIMIZER:-auto}"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"

mkdir -p "$WORK"
cd "$WORK"
T0=$(date +%s)
stamp() { echo "[recipe] $(date -u +%H:%M:%S) (+$(($(date +%s) - T0)) s) $*"; }
# The wall time of each part of this invocation, for the summary (a rerun that resumes times only
# what it ran): `timed NAME` closes the part under way and opens NAME ("" closes the last one).
: > timings.tsv
PART="" PART_T0=$T0
timed() {
    local now
    now=$(date +%s)
    [ -z "$PART" ] || printf '%s\t%s\n' "$PART" "$((now - PART_T0))" >> timings.tsv
    PART=$1 PART_T0=$now
}
scaled() {  # N FACTOR MIN: round(N * FACTOR), at least MIN
    python -c "import sys; print(max(int(sys.argv[3]), round(int(sys.argv[1]) * float(sys.argv[2]))))" "$@"
}
steps() { scaled "$1" "$SCALE" 1; }

CONCEPTS=("red circle" "blue square" "green triangle" "yellow star" "purple hexagon" "orange cross"
          "red square" "blue circle")  # synthetic.DEFAULT_CONCEPTS, what the demo prompts with
HELDOUT_SEEDS=(424242 424243 424244)   # never used for training data (training uses seed 1 and 2)
HELDOUT_FRAMES=$(scaled 60 "$DATA_SCALE" 4)
# Validation bags (not scored here): the operating point was first chosen on seeds 5-7 (again on all
# eight in session 29, for the 336 px student); 8-12 were added
# in session 27, when three 60-frame bags could not rank two fine-tunes that differed by 0.02
# (models/demo/MODEL_CARD.md, "Reading the shape, trained"): choose the next change on all eight.
VALIDATION_SEEDS=(5 6 7 8 9 10 11 12)
# Every row below is scored at the model's own operating point (score and new-track thresholds,
# masks cropped to boxes and cut at mask probability 0.01, the teacher's at 0.047), which the demo
# models carry in their config (registry.DEMO_OPERATING_POINT, chosen on validation sequences,
# seeds 5-12) and so in every export.

# ------------------------------------------------------------------------------------- data
stamp "writing world data"
timed data
# --negatives 3: three absent phrases per image, hardest first (an absent target sharing a colour
# or shape with a present object: "orange cross" beside an orange circle)
IMAGES=$(scaled 3000 "$DATA_SCALE" 12)
CLIPS=$(scaled 160 "$DATA_SCALE" 2)
[ -f data/saco/annotations.json ] || efficientsam3 world saco data/saco --seed 1 --num "$IMAGES" --negatives 3
[ -f "data/sav/sav_$(printf %06d "$CLIPS")_manual.json" ] ||
    efficientsam3 world sav data/sav --seed 2 --num "$CLIPS" --frames 24
for seed in "${HELDOUT_SEEDS[@]}"; do
    [ -f "data/heldout-$seed/gt.json" ] || efficientsam3 world rosbag "data/heldout-$seed" --seed "$seed" \
        --frames "$HELDOUT_FRAMES"
done
# validation bags: `efficientsam3 eval-bag data/val-S/bag ... --gt data/val-S/gt.json --mask-threshold P`
# (and --score-threshold / --new-track-threshold) is how registry.DEMO_OPERATING_POINT was chosen
for seed in "${VALIDATION_SEEDS[@]}"; do
    [ -f "data/val-$seed/gt.json" ] || efficientsam3 world rosbag "data/val-$seed" --seed "$seed" \
        --frames "$HELDOUT_FRAMES"
done

# ---------------------------------------------------------------------------------- training
train() {  # STAGE CONFIG [overrides...]; resumable (--resume auto), so a rerun continues
    local stage=$1 config=$2 steps_and_run n run
    shift 2
    # assigned first, then split: `set -e` stops the recipe if this fails
    steps_and_run=$(python - "$CONF/$config" <<'EOF'
import pathlib, sys, yaml
run = yaml.safe_load(open(sys.argv[1]))["run"]
print(run["steps"], pathlib.PurePath(run["output_dir"]).name)
EOF
)
    read -r n run <<< "$steps_and_run"
    stamp "$stage ($config)"
    timed "$run"
    efficientsam3-train "$stage" --config "$CONF/$config" --resume auto run.steps="$(steps "$n")" \
        optim.implementation="$OPTIMIZER" "$@"
}
train stage3 teacher_stage3.yaml
train stage1-image student_stage1_image.yaml
train stage3 student_stage3.yaml
train stage3 student_stage3_336.yaml    # runs/student-336: the shipped student
train stage2 student_stage2.yaml  # runs/tracker (the name changed with the order: an older
                                  # runs/student-stage2 holds a tracker of the stage-1 trunk)
T_TRAIN=$(($(date +%s) - T0))
stamp "training done in $T_TRAIN s"
timed evaluation

# -------------------------------------------------------------------------------- evaluation
CONCEPT_ARGS=()
for c in "${CONCEPTS[@]}"; do CONCEPT_ARGS+=(--concept "$c"); done
TRACKER=runs/tracker/export/model.safetensors
STUDENT=runs/student-336/export/model.safetensors
for who in teacher student student+memory; do
    memory=(); model=runs/teacher/export/model.safetensors
    if [ "$who" != teacher ]; then model=$STUDENT; fi
    if [ "$who" = student+memory ]; then memory=(--memory perceiver --memory-checkpoint "$TRACKER"); fi
    for seed in "${HELDOUT_SEEDS[@]}"; do
        out="eval/$who-$seed"
        rm -rf "$out"
        stamp "eval-bag $who on held-out seed $seed"
        efficientsam3 eval-bag "data/heldout-$seed/bag" --image-topic /camera/image_raw "${CONCEPT_ARGS[@]}" \
            --model "$model" "${memory[@]}" --backend torch --device cpu \
            --gt "data/heldout-$seed/gt.json" --no-progress --out "$out"
    done
done

# Summary over the held-out sequences, from each eval-bag report's "overall" scores (mask IoU
# over every GT instance, mean per-concept mask AP, tracker IDF1 / MOTA; see
# evaluation.scoring.overall_scores), pooled by evaluation.scoring.pool_overall: IoU weighted by
# instances, the rest averaged per sequence (what `efficientsam3 sweep-thresholds` pools too);
# IDF1 / MOTA pooled by counts (MOTChallenge's way) are printed beside them.
timed ""
python - "$T_TRAIN" "${HELDOUT_SEEDS[@]}" <<'EOF' | tee scores.md
import json, sys
from efficientsam3_ros.evaluation.scoring import pool_overall
t_train, seeds = int(sys.argv[1]), sys.argv[2:]
parts = [line.split("\t") for line in open("timings.tsv").read().splitlines()]
summary = {"train_wall_s": t_train, "heldout_seeds": [int(s) for s in seeds],
           "wall_s": {name: int(seconds) for name, seconds in parts}}
rows = []
for who in ("teacher", "student", "student+memory"):
    res = pool_overall([json.load(open(f"eval/{who}-{seed}/report.json"))["scores"]["overall"] for seed in seeds])
    summary[who] = res
    rows.append(f"| {who} | {res['mask_iou']:.3f} | {res['mask_ap']:.3f} | {res['idf1']:.3f} | {res['mota']:.3f} |")
s, t = summary["student"], summary["teacher"]
summary["student_over_teacher_iou"] = s["mask_iou"] / max(t["mask_iou"], 1e-9)
json.dump(summary, open("scores.json", "w"), indent=2)
print(f"held-out sequences: seeds {', '.join(seeds)}, {summary['teacher']['gt_instances']} GT instances")
print("| model | mask IoU | mask AP | IDF1 | MOTA |\n| --- | --- | --- | --- | --- |")
print("\n".join(rows))
fmt = lambda v: "-" if v is None else f"{v:.3f}"
print("pooled by counts (MOTChallenge's combined scores), IDF1 / MOTA: " + "; ".join(
    f"{who} {fmt(summary[who]['idf1_pooled'])} / {fmt(summary[who]['mota_pooled'])}"
    for who in ("teacher", "student", "student+memory")))
print(f"student / teacher mask IoU: {summary['student_over_teacher_iou']:.3f}; training wall time {t_train} s")
print("\n| part (runs/NAME for training) | wall time |\n| --- | --- |")
for name, seconds in summary["wall_s"].items():
    print(f"| {name} | {seconds / 60:.1f} min |")
print(f"| **total** | **{sum(summary['wall_s'].values()) / 60:.1f} min** |")
EOF

# ---------------------------------------------------------------------------------- install
if [ "${DEMO_INSTALL:-1}" = 1 ]; then
    mkdir -p "$REPO/models/demo"
    install -m 0644 "$STUDENT" "$REPO/models/demo/model.safetensors"
    install -m 0644 "${STUDENT%.safetensors}.json" "$REPO/models/demo/model.json"
    install -m 0644 "$TRACKER" "$REPO/models/demo/tracker.safetensors"
    install -m 0644 "${TRACKER%.safetensors}.json" "$REPO/models/demo/tracker.json"
    stamp "installed $REPO/models/demo/model.safetensors ($(du -h "$REPO/models/demo/model.safetensors" | cut -f1))"
fi
stamp "recipe done"

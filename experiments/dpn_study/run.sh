#!/usr/bin/env bash
# The study's runs (experiments/dpn_study/README.md), from the repository root after
# `make install`: `experiments/dpn_study/run.sh` (all, three processes side by side) or one
# part (a, b, c, d, e). A trait's NPTI identification is computed once, whichever part needs
# it first (another one waits for it through the artifact store's lock).
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/multiruns/dpn_study}
# 16 test questions per run, and the capability probe (strength=auto's and the evaluation's,
# the same measurement) on the first 100 MC items, the same for every cell; one torch
# thread per process (the two chains share 2 cores)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# (agreeableness, added last: TRAITS=agreeableness experiments/dpn_study/run.sh agree)
COMMON=(trait=${TRAITS:-openness,conscientiousness} data.n_test=16 eval.capability_n_mc=100 logger=none)
AUTO=(method.auto_n_mc=100)

chain_a() {
  # NPTI as published (the defaults: answers, 230 neurons per aspect, clamp on, strength=auto)
  $PY -m pkt.run -m method=neuron aspect=high,low "${COMMON[@]}" "${AUTO[@]}" \
      hydra.sweep.dir=$OUT/npti
  # DPN-LE's edit, statistics from NPTI's persona answers (the ones just identified)
  $PY -m pkt.run -m method=dpn method.source=answers aspect=high,low "${COMMON[@]}" "${AUTO[@]}" \
      hydra.sweep.dir=$OUT/dpn_answers
  # diagnosis of NPTI's high aspect: the clamp of the opposite set off, strength=auto again
  $PY -m pkt.run -m method=neuron aspect=high method.deactivate=false "${COMMON[@]}" "${AUTO[@]}" \
      hydra.sweep.dir=$OUT/npti_noclamp
}

chain_b() {
  $PY -m pkt.run -m method=base "${COMMON[@]}" hydra.sweep.dir=$OUT/base
  # DPN-LE as published (statistics from the prompts)
  $PY -m pkt.run -m method=dpn aspect=high,low "${COMMON[@]}" "${AUTO[@]}" hydra.sweep.dir=$OUT/dpn
  # NPTI's edit, statistics from the prompts
  $PY -m pkt.run -m method=neuron method.source=prompts aspect=high,low "${COMMON[@]}" "${AUTO[@]}" \
      hydra.sweep.dir=$OUT/npti_prompts
}

no_d() {
  # DPN-LE's selection without the Cohen's d criterion (d_threshold=0: the top 0.5% |delta|
  # of each layer), from the prompts and from the answers: over answer tokens |d| stays
  # below 0.5, so the published 0.8 selects no neuron there
  $PY -m pkt.run -m method=dpn method.d_threshold=0 aspect=high,low "${COMMON[@]}" "${AUTO[@]}" \
      hydra.sweep.dir=$OUT/dpn_d0
  $PY -m pkt.run -m method=dpn method.source=answers method.d_threshold=0 aspect=high,low \
      "${COMMON[@]}" "${AUTO[@]}" hydra.sweep.dir=$OUT/dpn_answers_d0
}

prompts_k230() {
  # NPTI from the prompts with NPTI's own budget: only the 230 largest diffs (model.npti_k_min
  # 0.005), not every neuron with diff >= 0.1 (about 1000 from the prompts)
  $PY -m pkt.run -m method=neuron method.source=prompts method.diff_threshold=1.01 aspect=high,low \
      "${COMMON[@]}" "${AUTO[@]}" hydra.sweep.dir=$OUT/npti_prompts_k230
}

diagnosis() {
  # NPTI's high aspect at the strength its run chose (s), one factor at a time (diagnose.py);
  # needs the npti sweep's high runs
  for t in openness conscientiousness; do
    $PY experiments/dpn_study/diagnose.py --trait $t --runs $OUT/npti --n-mc 100 \
        --cells clamponly,noclamp,x2noclamp,x4noclamp,random_x2noclamp,x2 \
        --out ${DIAG_OUT:-experiments/dpn_study/results}
  done
  # the runner's run again, from the cache (its answers must be the run's: same_answers)
  $PY experiments/dpn_study/diagnose.py --trait conscientiousness --runs $OUT/npti --n-mc 100 \
      --cells default --out ${DIAG_OUT:-experiments/dpn_study/results}
}

agree() {
  # the cells run for agreeableness (with TRAITS=agreeableness), in two processes
  ($PY -m pkt.run -m method=neuron aspect=high,low "${COMMON[@]}" "${AUTO[@]}" \
       hydra.sweep.dir=$OUT/npti
   $PY -m pkt.run -m method=dpn method.source=answers method.d_threshold=0 aspect=high,low \
       "${COMMON[@]}" "${AUTO[@]}" hydra.sweep.dir=$OUT/dpn_answers_d0) &
  $PY -m pkt.run -m method=base "${COMMON[@]}" hydra.sweep.dir=$OUT/base
  $PY -m pkt.run -m method=dpn aspect=high,low "${COMMON[@]}" "${AUTO[@]}" hydra.sweep.dir=$OUT/dpn
  $PY -m pkt.run -m method=neuron method.source=prompts method.diff_threshold=1.01 aspect=high,low \
      "${COMMON[@]}" "${AUTO[@]}" hydra.sweep.dir=$OUT/npti_prompts_k230
  wait
}

case "${1:-all}" in
  a) chain_a ;;
  b) chain_b ;;
  c) diagnosis ;;
  d) no_d ;;
  e) prompts_k230 ;;
  agree) agree ;;
  # (the diagnosis reads the npti sweep of chain a)
  all) (chain_a; diagnosis) & (chain_b; prompts_k230) & no_d; wait ;;
esac

#!/usr/bin/env bash
# Adapts Debian's pocketsphinx en-us acoustic model (a 16 kHz model) to the
# telephone channel with MAP, and prints the folder of the adapted model,
# laid out like DIALSTACK_ASR_MODEL_DIR (en-us/, the dictionary, the
# language model). See docs/BENCHMARKS.md (issue 12) for what it gains.
#
#   scripts/asr-adapt.sh     build if missing or stale, print the path
#
# 1. examples/asr_adapt.rs synthesises the corpus: espeak-ng voices that
#    benches/asr_accuracy.rs does not use (flite not at all), digits,
#    yes/no, menu words and general sentences, noise, µ-law, and the very
#    8 → 16 kHz upsampling and band filling the recognizer applies.
# 2. sphinx_fe computes the features with the model's own parameters.
# 3. bw (Baum-Welch) collects statistics against the model, in parallel
#    parts; map_adapt moves means, variances and mixture weights towards
#    them. This runs $PASSES times, each pass aligning with the last
#    pass's model.
# 4. mk_s2sendump packs the weights in pocketsphinx's format.
#
# The model lives in $DIALSTACK_TOOLS/asr/en-us-8k-adapted (default
# ~/.cache/dialstack/tools), with a `key` file: the SHA-256 of this script,
# the code that shapes the audio, the base model, and the engine and tool
# versions. It is rebuilt only when the key changes, in a temporary folder
# that replaces the old one when complete. About 3 minutes on 2 cores.
#
# Needs: sphinxtrain, sphinxbase-utils (sphinx_fe), pocketsphinx,
# pocketsphinx-en-us, espeak-ng, cargo (scripts/test-env.sh installs them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${DIALSTACK_TOOLS:-$HOME/.cache/dialstack/tools}"
BASE="/usr/share/pocketsphinx/model/en-us"
ST="/usr/lib/sphinxtrain"
OUT="$TOOLS/asr/en-us-8k-adapted"
UTTERANCES="${DIALSTACK_ASR_ADAPT_UTTERANCES:-1500}"
PASSES="${DIALSTACK_ASR_ADAPT_PASSES:-2}"
SEED=12
JOBS="$(nproc 2>/dev/null || echo 2)"

say() { printf 'asr-adapt: %s\n' "$*" >&2; }
die() {
  say "$*"
  exit 1
}

for tool in "$ST/bw" "$ST/map_adapt" "$ST/mk_s2sendump"; do
  [ -x "$tool" ] || die "$tool missing: apt-get install sphinxtrain"
done
command -v sphinx_fe >/dev/null || die "sphinx_fe missing: apt-get install sphinxbase-utils"
command -v pocketsphinx_mdef_convert >/dev/null || die "pocketsphinx_mdef_convert missing: apt-get install pocketsphinx"
command -v espeak-ng >/dev/null || die "espeak-ng missing: apt-get install espeak-ng"
[ -f "$BASE/en-us/means" ] || die "$BASE missing: apt-get install pocketsphinx-en-us"

# The key: everything that changes the adapted model.
MP="$ROOT/services/media-processor"
key="$(
  {
    echo "utterances=$UTTERANCES passes=$PASSES seed=$SEED"
    cat "$0" "$MP/examples/asr_adapt.rs" "$MP/benches/common/channel.rs" "$MP/src/ai/asr.rs" \
      "$MP/src/ai/tts.rs" "$MP/src/ai/audio.rs" "$ROOT/crates/media/src/resample.rs" \
      "$ROOT/crates/media/src/g711.rs"
    sha256sum "$BASE"/en-us/* "$BASE/cmudict-en-us.dict" | cut -d' ' -f1
    espeak-ng --version
    dpkg-query -W sphinxtrain sphinxbase-utils pocketsphinx 2>/dev/null || true
  } | sha256sum | cut -c1-16
)"
if [ -f "$OUT/key" ] && [ "$(cat "$OUT/key")" = "$key" ] && [ -f "$OUT/en-us/sendump" ]; then
  echo "$OUT"
  exit 0
fi

started=$SECONDS
mkdir -p "$TOOLS/asr"
WORK="$(mktemp -d "$TOOLS/asr/.build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
LOG="$WORK/log"
mkdir -p "$LOG"
say "building the adapted model in $WORK (key $key; logs in $LOG until done)"

# 1. The corpus (cargo builds the example in the test suite's profile).
(cd "$ROOT" && cargo build -q -p media-processor --example asr_adapt)
adapt() { (cd "$ROOT" && cargo run -q -p media-processor --example asr_adapt -- "$@"); }
adapt corpus "$WORK/corpus" --utterances "$UTTERANCES" --seed "$SEED" >&2
C="$WORK/corpus"

# 2. Features: the front end's values from the model's feat.params
#    (sphinx_fe refuses the decoder-only ones in that file).
fe_args=()
for opt in -lowerf -upperf -nfilt -transform -lifter; do
  val="$(awk -v o="$opt" '$1 == o { print $2 }' "$BASE/en-us/feat.params")"
  if [ -n "$val" ]; then fe_args+=("$opt" "$val"); fi
done
mkdir -p "$C/mfc"
sphinx_fe -samprate 16000 "${fe_args[@]}" -mswav yes -c "$C/adapt.fileids" \
  -di "$C/wav" -ei wav -do "$C/mfc" -eo mfc >"$LOG/fe.log" 2>&1

# The starting model in sphinxtrain's formats: a text mdef, float mixture
# weights decoded from sendump, transition matrices as probabilities.
H="$WORK/hmm0"
mkdir -p "$H"
pocketsphinx_mdef_convert -text "$BASE/en-us/mdef" "$H/mdef.txt" >"$LOG/mdef.log" 2>&1
adapt mixw "$BASE/en-us/sendump" "$H/mixture_weights" >"$LOG/mixw.log"
adapt tmat "$BASE/en-us/transition_matrices" "$H/transition_matrices"
cp "$BASE/en-us/means" "$BASE/en-us/variances" "$BASE/en-us/noisedict" "$H/"
feat() { awk -v o="$1" '$1 == o { print $2 }' "$BASE/en-us/feat.params"; }

# 3. Baum-Welch statistics in $JOBS parts, then MAP, $PASSES times.
for ((pass = 1; pass <= PASSES; pass++)); do
  prev="$WORK/hmm$((pass - 1))" next="$WORK/hmm$pass"
  mkdir -p "$next"
  cp "$H/mdef.txt" "$H/noisedict" "$next/"
  accums=()
  for ((part = 1; part <= JOBS; part++)); do
    acc="$WORK/acc$pass.$part"
    mkdir -p "$acc"
    accums+=("$acc")
    "$ST/bw" -hmmdir "$prev" -moddeffn "$H/mdef.txt" -ts2cbfn .ptm. \
      -feat "$(feat -feat)" -svspec "$(feat -svspec)" -cmn "$(feat -cmn)" -agc "$(feat -agc)" \
      -dictfn "$BASE/cmudict-en-us.dict" -fdictfn "$H/noisedict" \
      -ctlfn "$C/adapt.fileids" -lsnfn "$C/adapt.transcription" \
      -cepdir "$C/mfc" -cepext mfc -accumdir "$acc" -part "$part" -npart "$JOBS" \
      >"$LOG/bw$pass.$part.log" 2>&1 &
  done
  for job in $(jobs -p); do wait "$job" || die "bw failed, see $LOG"; done
  dirs="$(
    IFS=,
    echo "${accums[*]}"
  )"
  "$ST/map_adapt" -moddeffn "$H/mdef.txt" -ts2cbfn .ptm. \
    -meanfn "$prev/means" -varfn "$prev/variances" \
    -mixwfn "$prev/mixture_weights" -tmatfn "$prev/transition_matrices" \
    -accumdir "$dirs" \
    -mapmeanfn "$next/means" -mapvarfn "$next/variances" \
    -mapmixwfn "$next/mixture_weights" -maptmatfn "$next/transition_matrices" \
    >"$LOG/map$pass.log" 2>&1 || die "map_adapt failed, see $LOG/map$pass.log"
  # Utterances bw could not align are left out of the statistics.
  say "pass $pass: $(cat "$LOG"/bw"$pass".*.log | grep -c 'ignored$' || true) of $UTTERANCES utterances not aligned"
done
H_LAST="$WORK/hmm$PASSES"

# 4. The model folder: the packaged binary mdef, transition matrices and
#    feat.params; adapted means, variances and packed mixture weights;
#    the packaged dictionary and language model.
M="$WORK/model"
mkdir -p "$M/en-us"
cp "$BASE/en-us/mdef" "$BASE/en-us/feat.params" "$BASE/en-us/noisedict" \
  "$BASE/en-us/transition_matrices" "$M/en-us/"
cp "$H_LAST/means" "$H_LAST/variances" "$M/en-us/"
"$ST/mk_s2sendump" -pocketsphinx yes -moddeffn "$H/mdef.txt" \
  -mixwfn "$H_LAST/mixture_weights" -sendumpfn "$M/en-us/sendump" >"$LOG/sendump.log" 2>&1
cp "$BASE/cmudict-en-us.dict" "$BASE/en-us.lm.bin" "$M/"
cat >"$M/README" <<EOF
pocketsphinx en-us acoustic model, MAP-adapted to 8 kHz G.711 telephone
audio as media-processor feeds it to the engine (scripts/asr-adapt.sh,
$UTTERANCES synthetic utterances, $PASSES passes). Use it with
DIALSTACK_ASR_MODEL_DIR=$OUT
EOF
echo "$key" >"$M/key"

# Swap in the new model; a concurrent reader sees the old or the new one.
rm -rf "$OUT.old"
[ -d "$OUT" ] && mv "$OUT" "$OUT.old"
mv "$M" "$OUT"
rm -rf "$OUT.old"
say "done in $((SECONDS - started)) s"
echo "$OUT"

#!/usr/bin/env bash
# cost-report.sh BUILD_DIR — the attention cost report: runs `attn cost`
# (prefill at N = 128 ... 8192, naive and tiled kernels, random 15M-shape
# model) into BUILD_DIR/cost (cost.csv, cost.md), plots cost.png with
# gnuplot (log-log: attention time against N, and peak attention memory
# against N) and prints cost.md.  `make cost-report` calls it.  Without
# gnuplot the CSV and markdown are still written and the plot is skipped.
# Extra arguments go to `attn cost` (e.g. --runs 5 --threads 2).
set -euo pipefail

BUILD=${1:?usage: scripts/cost-report.sh BUILD_DIR [attn cost options]}
shift
ATTN=$BUILD/attn
OUT=$BUILD/cost
if [ ! -x "$ATTN" ]; then
  echo "cost-report.sh: $ATTN not found; build first (make build)" >&2
  exit 1
fi

start=$(date +%s)
"$ATTN" cost --out "$OUT" "$@"

if command -v gnuplot >/dev/null 2>&1; then
  # one data file per kernel, so each is one line in the plot
  for k in naive tiled; do
    awk -F, -v k="$k" 'NR > 1 && $2 == k { print $1, $4, $6 }' "$OUT/cost.csv" >"$OUT/$k.dat"
  done
  term="pngcairo size 1400,600 font 'DejaVu Sans,11'"
  gnuplot -e 'set terminal' 2>/dev/null | grep -q pngcairo || term="png size 1400,600"
  gnuplot <<EOF
set terminal $term
set output '$OUT/cost.png'
set datafile separator whitespace
set fit quiet
set fit logfile '/dev/null'
fn(x) = an + kn * x
ft(x) = at + kt * x
an = -10; kn = 2; at = -10; kt = 2
fit fn(x) '$OUT/naive.dat' using (log(\$1)):(log(\$2)) via an, kn
fit ft(x) '$OUT/tiled.dat' using (log(\$1)):(log(\$2)) via at, kt
stats '$OUT/naive.dat' using 1:2 nooutput
nmin = STATS_min_x; nmax = STATS_max_x; tmax = STATS_max_y
stats '$OUT/tiled.dat' using 1:2 nooutput
tmin = STATS_min_y
stats '$OUT/tiled.dat' using 1:3 nooutput
pmin = STATS_min_y
set multiplot layout 1,2 title "Prefill attention cost against context length N (random 15M-shape model, 256-row chunks)"
set logscale xy 2
set grid xtics ytics
set xlabel "context length N (tokens)"
set xrange [nmin/1.25:nmax*1.25]
set xtics nmin, 2, nmax
set format y "%g"
set key bottom right box opaque samplen 3
set ylabel "attention time per prompt (ms)"
set yrange [tmin*1e3/1.5:tmax*1e3*1.5]
set title "Attention time (QK^T, softmax, PV; all layers)"
plot '$OUT/naive.dat' using 1:(\$2*1e3) with linespoints lw 2 pt 7 title sprintf("naive: fitted k = %.2f", kn), \
     '$OUT/tiled.dat' using 1:(\$2*1e3) with linespoints lw 2 pt 5 title sprintf("tiled: fitted k = %.2f", kt), \
     tmax*1e3*(x/nmax)**2 with lines dt 2 lc rgb "gray40" title "N^2 reference"
set ylabel "peak attention scratch (MiB)"
set yrange [pmin/1048576/2:nmax*nmax*4/1048576*2]
set title "Peak attention memory (one layer of one chunk)"
set key top left
plot '$OUT/naive.dat' using 1:(\$3/1048576) with linespoints lw 2 pt 7 title "naive, 256-row chunks", \
     '$OUT/tiled.dat' using 1:(\$3/1048576) with linespoints lw 2 pt 5 title "tiled", \
     x*x*4/1048576 with lines dt 2 lc rgb "gray40" title "naive, one N-row chunk (N^2 floats)"
unset multiplot
EOF
  rm -f "$OUT/naive.dat" "$OUT/tiled.dat"
  echo "cost-report.sh: plot written to $OUT/cost.png" >&2
else
  echo "cost-report.sh: gnuplot not found (Debian: gnuplot-nox); plot skipped" >&2
  printf '\n(Plot skipped: gnuplot was not installed when this report was made.)\n' >>"$OUT/cost.md"
fi

echo "cost-report.sh: done in $(($(date +%s) - start)) s" >&2
echo
cat "$OUT/cost.md"

set terminal pngcairo size 900,560 noenhanced
set grid
set key left top
set ylabel 'output GB/s (median wall time)'
set yrange [0:*]
set output 'bench/plot-native-size.png'
set title 'convert --to native --io mmap --sink file --memory-budget 1GiB --device auto: throughput against checkpoint size'
set xlabel 'input size (GB)'
plot 'bench/plot-native.dat' index 0 using 1:2 with linespoints lw 2 title '1 thread(s)', 'bench/plot-native.dat' index 1 using 1:2 with linespoints lw 2 title '2 thread(s)', 'bench/plot-native.dat' index 2 using 1:2 with linespoints lw 2 dt 2 title 'cp of the output', 'bench/plot-native.dat' index 3 using 1:2 with linespoints lw 2 dt 3 title 'write floor'
set output 'bench/plot-native-threads.png'
set title 'convert --to native --io mmap --sink file --memory-budget 1GiB --device auto: throughput against threads'
set xlabel 'threads'
set xtics 1
plot 'bench/plot-native.dat' index 4 using 1:2 with linespoints lw 2 title 'input 1.03 GB', 'bench/plot-native.dat' index 4 using 1:3 with linespoints lw 2 title 'input 2.07 GB', 'bench/plot-native.dat' index 4 using 1:4 with linespoints lw 2 title 'input 3.10 GB'

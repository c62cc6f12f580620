fn main() {
    ring_bench::main_with(vec![])
}

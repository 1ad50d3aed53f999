fn main() {
    println!("pbx-edge {}", env!("CARGO_PKG_VERSION"));
}

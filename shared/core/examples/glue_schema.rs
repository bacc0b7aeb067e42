//! Prints the bronze tables' Glue schema (`make schema` writes it to `infra/schema/bronze.json`).

#[allow(clippy::print_stdout)]
fn main() {
    println!("{:#}", fleetlake_core::bronze::glue_schema());
}

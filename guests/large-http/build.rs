//! Generates the bulk of the `large-http` guest: many distinct functions, all reachable
//! through one table so none is removed, and a table of data they read.
//!
//! The point is size, in code that has to be compiled and data that has to be stored and
//! mapped, not speed: the guest measures how shoal copes with a component of several
//! megabytes from upload to first response.

use std::fmt::Write as _;

/// Functions generated; each compiles to a few hundred bytes of wasm.
const N_FUNCTIONS: usize = 3000;
/// Arithmetic steps per function.
const N_STEPS: usize = 40;
/// Bytes of data the functions read.
const DATA_BYTES: usize = 2 << 20;

fn main() {
    let mut code = String::new();
    // A deterministic stream of constants: the same source on every build.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for function_idx in 0..N_FUNCTIONS {
        writeln!(
            code,
            "#[inline(never)]\nfn f{function_idx}(mut x: u64) -> u64 {{"
        )
        .unwrap();
        for _ in 0..N_STEPS {
            let constant = next();
            let op = match constant % 4 {
                0 => format!("x = x.wrapping_mul({constant:#x});"),
                1 => format!("x ^= x.rotate_left({});", constant % 63 + 1),
                2 => format!(
                    "x = x.wrapping_add(DATA[(x as usize) % DATA.len()] as u64 ^ {constant:#x});"
                ),
                _ => format!(
                    "x = x.wrapping_sub({constant:#x}) ^ (x >> {});",
                    constant % 31 + 1
                ),
            };
            code.push_str(&op);
            code.push('\n');
        }
        code.push_str("x\n}\n");
    }
    write!(
        code,
        "static FUNCTIONS: [fn(u64) -> u64; {N_FUNCTIONS}] = ["
    )
    .unwrap();
    for function_idx in 0..N_FUNCTIONS {
        write!(code, "f{function_idx},").unwrap();
    }
    code.push_str("];\n");
    write!(code, "static DATA: [u8; {DATA_BYTES}] = [").unwrap();
    for _ in 0..DATA_BYTES / 8 {
        for byte in next().to_le_bytes() {
            write!(code, "{byte},").unwrap();
        }
    }
    code.push_str("];\n");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("generated.rs");
    std::fs::write(out, code).unwrap();
    println!("cargo:rerun-if-changed=build.rs");
}

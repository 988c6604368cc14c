//! The case registry: every `/// attack: SURFACE | ATTACK | REFUSAL` line
//! of the module files, checked against the table in README.md.
//! Regenerate the table with `SIGIL_REGEN_ADVERSARIAL=1 cargo test
//! --all-features --test adversarial readme_lists_every_case`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The bar: at least 150 distinct attacks.
const AT_LEAST: usize = 150;
const BEGIN: &str = "<!-- cases: generated from the `/// attack:` lines; do not edit by hand -->";
const END: &str = "<!-- end of cases -->";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/adversarial")
}

/// (surface, attack, refusal, test name) of every case, in file order.
fn cases() -> Vec<[String; 4]> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("tests/adversarial")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("module file");
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let Some(entry) = l.trim().strip_prefix("/// attack:") else {
                continue;
            };
            let parts: Vec<String> = entry.split('|').map(|s| s.trim().to_string()).collect();
            assert_eq!(
                parts.len(),
                3,
                "{}:{}: SURFACE | ATTACK | REFUSAL",
                f.display(),
                i + 1
            );
            // The test it documents: the next `fn` within a few lines, under #[test].
            let rest = &lines[i + 1..lines.len().min(i + 6)];
            assert!(
                rest.iter().any(|l| l.trim() == "#[test]"),
                "{}:{}: an attack line must sit above a #[test]",
                f.display(),
                i + 1
            );
            let name = rest
                .iter()
                .find_map(|l| l.trim().strip_prefix("fn "))
                .and_then(|l| l.split('(').next())
                .unwrap_or_else(|| panic!("{}:{}: no fn after the attack line", f.display(), i + 1))
                .to_string();
            out.push([parts[0].clone(), parts[1].clone(), parts[2].clone(), name]);
        }
    }
    out
}

fn table(cases: &[[String; 4]]) -> String {
    let mut t =
        String::from("| # | surface | attack | expected refusal | test |\n|---|---|---|---|---|\n");
    for (i, [s, a, r, n]) in cases.iter().enumerate() {
        t.push_str(&format!("| {} | {s} | {a} | {r} | `{n}` |\n", i + 1));
    }
    t
}

#[test]
fn readme_lists_every_case() {
    let cases = cases();
    // Each case is a distinct attack: no two tests, and no two attack texts, alike.
    let names: BTreeSet<_> = cases.iter().map(|c| c[3].clone()).collect();
    assert_eq!(names.len(), cases.len(), "a test is listed twice");
    let attacks: BTreeSet<_> = cases.iter().map(|c| (c[0].clone(), c[1].clone())).collect();
    assert_eq!(attacks.len(), cases.len(), "two cases name the same attack");
    assert!(cases.len() >= AT_LEAST, "only {} cases", cases.len());

    let readme = dir().join("README.md");
    let text = std::fs::read_to_string(&readme).expect("tests/adversarial/README.md");
    let (head, rest) = text.split_once(BEGIN).expect("README has the cases marker");
    let (current, tail) = rest.split_once(END).expect("README has the end marker");
    let want = format!("\n{}", table(&cases));
    if current != want {
        if std::env::var_os("SIGIL_REGEN_ADVERSARIAL").is_some() {
            std::fs::write(&readme, format!("{head}{BEGIN}{want}{END}{tail}"))
                .expect("write README");
            return;
        }
        panic!(
            "tests/adversarial/README.md's table is not the cases' list. Regenerate it with\n  \
             SIGIL_REGEN_ADVERSARIAL=1 cargo test --all-features --test adversarial readme_lists_every_case\n\
             Expected table:\n{want}"
        );
    }
}

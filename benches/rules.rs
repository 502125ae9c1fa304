//! Rule engine at scale: 10,000 rules (9,000 keyword rules, 1,000 regex rules) and a
//! 100-character text. Measures one evaluation (the target is a median under 20 µs) and one
//! compile of the whole set from TOML text (what a reload costs).
//!
//! Run: `cargo bench --bench rules -- --warm-up-time 1 --measurement-time 3`

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use kefu::config::WindowConfig;
use kefu::rules::{RuleSet, input};

const KEYWORD_RULES: usize = 9_000;
const REGEX_RULES: usize = 1_000;

/// A deterministic two-character CJK word per index, so keywords look like real ones.
fn word(i: usize) -> String {
    let a = char::from_u32(0x4E00 + (i * 7919 % 20_000) as u32).unwrap_or('字');
    let b = char::from_u32(0x4E00 + (i * 104_729 % 20_000) as u32).unwrap_or('词');
    format!("{a}{b}")
}

fn rule_files() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for f in 0..10 {
        let mut s = String::new();
        for i in (f * 1000)..(f * 1000 + 1000) {
            if i < KEYWORD_RULES {
                let _ = write!(
                    s,
                    "[[rule]]\nname = \"kw{i}\"\npriority = {}\n[rule.when]\n\
                     text_contains = [\"{}\", \"sku{i}x\"]\n[[rule.reply]]\n\
                     text = \"answer {i} for {{openid}}\"\n\n",
                    i % 7,
                    word(i)
                );
            } else {
                let _ = write!(
                    s,
                    "[[rule]]\nname = \"re{i}\"\npriority = {}\n[rule.when]\n\
                     text_regex = 'ticket{i}-(\\d{{4,}})'\n[[rule.reply]]\n\
                     text = \"ticket {{1}}\"\n\n",
                    i % 5
                );
            }
        }
        files.push((PathBuf::from(format!("rules-{f:02}.toml")), s));
    }
    files
}

fn bench(c: &mut Criterion) {
    let files = rule_files();
    let loaded = RuleSet::from_sources(files.clone(), &WindowConfig::default())
        .unwrap_or_else(|d| panic!("bench rules do not compile: {}", d[0]));
    let set = loaded.set;
    assert_eq!(set.len(), KEYWORD_RULES + REGEX_RULES);

    // 100 characters: mostly filler, two keywords and one ticket number.
    let mut hit = format!(
        "您好，我想问一下{}这个商品还有货吗？另外 ticket9500-123456 的进度如何，",
        word(42)
    );
    hit.push_str(&word(4321));
    while hit.chars().count() < 100 {
        hit.push('的');
    }
    let hit: String = hit.chars().take(100).collect();
    let miss: String = "今天天气不错，我们随便聊聊，没有任何关键词也没有订单号码。"
        .repeat(4)
        .chars()
        .take(100)
        .collect();
    let hit_input = input::text("oBench000000000000000000001", &hit).expect("a text push");
    let miss_input = input::text("oBench000000000000000000001", &miss).expect("a text push");
    let fired = set.evaluate(&hit_input).fired;
    assert_eq!(fired.len(), 1, "the first matching rule stops evaluation: {fired:?}");
    assert!(set.evaluate(&miss_input).fired.is_empty());

    c.bench_function("evaluate/10k rules, 100 chars, 2 keywords + 1 regex hit", |b| {
        b.iter(|| black_box(set.evaluate(black_box(&hit_input))))
    });
    c.bench_function("evaluate/10k rules, 100 chars, no match", |b| {
        b.iter(|| black_box(set.evaluate(black_box(&miss_input))))
    });
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.bench_function("10k rules from TOML", |b| {
        b.iter(|| {
            black_box(RuleSet::from_sources(black_box(files.clone()), &WindowConfig::default()))
        })
    });
    // Where compile time goes: the keyword rules alone, the regex rules alone.
    let (kw, re): (Vec<_>, Vec<_>) =
        files.iter().cloned().partition(|(p, _)| p.to_string_lossy().as_ref() < "rules-09.toml");
    g.bench_function("9k keyword rules from TOML", |b| {
        b.iter(|| black_box(RuleSet::from_sources(black_box(kw.clone()), &WindowConfig::default())))
    });
    g.bench_function("1k regex rules from TOML", |b| {
        b.iter(|| black_box(RuleSet::from_sources(black_box(re.clone()), &WindowConfig::default())))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

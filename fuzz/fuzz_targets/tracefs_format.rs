//! Tracepoint `format` files (`kernel::tracefs::TracepointFormat::parse`): the kernel writes
//! them, but their layout differs between kernels and `DPTRACE_TRACEFS` points anywhere.
//!
//! Properties: parsing never panics; a parsed format written back in the kernel's layout
//! parses to the same format (nothing is lost or invented); every field is found by its name;
//! `symbolic_values` never panics and, where a table exists, it is not empty.

#![no_main]

use dptrace::kernel::tracefs::TracepointFormat;
use libfuzzer_sys::fuzz_target;

/// `format` in the layout of `/sys/kernel/tracing/events/*/*/format`.
fn render(format: &TracepointFormat) -> String {
    let mut text = format!("name: {}\nID: {}\nformat:\n", format.name, format.id);
    for f in &format.fields {
        text += &format!(
            "\tfield:{} {};\toffset:{};\tsize:{};\tsigned:{};\n",
            f.c_type,
            f.name,
            f.offset,
            f.size,
            u8::from(f.signed)
        );
    }
    text += &format!("\nprint fmt: {}\n", format.print_fmt);
    text
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(format) = TracepointFormat::parse(text) else { return };
    for field in &format.fields {
        assert!(!field.name.is_empty(), "a field without a name: {field:?}");
        let found = format.field(&field.name).expect("every field is found by its name");
        assert_eq!(found.name, field.name);
        if let Some(table) = format.symbolic_values(&field.name) {
            assert!(!table.is_empty(), "an empty symbol table is reported as none");
        }
    }
    let again = TracepointFormat::parse(&render(&format))
        .unwrap_or_else(|e| panic!("the rendered format does not parse: {e}\n{}", render(&format)));
    assert_eq!(again, format, "parse → render → parse changed the format");
});

//! The parser of ClickHouse type text (`Array(Nullable(DateTime64(3, 'UTC')))`): a plain
//! recursive descent, bounded by [`MAX_TYPE_DEPTH`] and [`MAX_TYPE_TEXT`].

use super::types::{ColumnType, MAX_TYPE_DEPTH, MAX_TYPE_TEXT, TimeZone, quote};

impl ColumnType {
    /// Parses a type as ClickHouse writes it, e.g. `Nullable(Array(UInt32))`.
    pub fn parse(text: &str) -> Result<ColumnType, String> {
        parse(text)
    }
}

fn parse(text: &str) -> Result<ColumnType, String> {
    if text.len() > MAX_TYPE_TEXT {
        return Err(format!("column type of {} bytes is too long (at most {MAX_TYPE_TEXT})", text.len()));
    }
    let mut p = TypeParser::new(text);
    let shown = if text.len() > 200 { format!("{}...", &text[..text.floor_char_boundary(200)]) } else { text.into() };
    let t = p.ty().map_err(|e| format!("invalid column type `{shown}`: {e}"))?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("invalid column type `{shown}`: unexpected text at position {}", p.i));
    }
    Ok(t)
}

struct TypeParser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

impl<'a> TypeParser<'a> {
    fn new(text: &'a str) -> Self {
        TypeParser { s: text.as_bytes(), i: 0, depth: 0 }
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> Result<(), std::string::String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected `{}` at position {}", c as char, self.i))
        }
    }
    fn ident(&mut self) -> Result<&str, std::string::String> {
        self.ws();
        let start = self.i;
        while self.i < self.s.len() && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_') {
            self.i += 1;
        }
        if start == self.i {
            return Err(format!("expected a type name at position {start}"));
        }
        Ok(std::str::from_utf8(&self.s[start..self.i]).unwrap())
    }
    fn int(&mut self) -> Result<i64, std::string::String> {
        self.ws();
        let start = self.i;
        if self.s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
        std::str::from_utf8(&self.s[start..self.i])
            .unwrap()
            .parse()
            .map_err(|_| format!("expected a number at position {start}"))
    }
    /// A quoted string with ClickHouse's escapes (`\\`, `\'`, `\n`, `\t`, `\r`, `\0`, `\b`,
    /// `\f`, `\a`, `\v`, `\xHH`; any other escaped character stands for itself).
    fn quoted(&mut self) -> Result<std::string::String, std::string::String> {
        self.eat(b'\'')?;
        let mut out = Vec::new();
        loop {
            match self.s.get(self.i) {
                None => return Err("unterminated string".into()),
                Some(b'\\') => {
                    let c = *self.s.get(self.i + 1).ok_or("unterminated string")?;
                    self.i += 2;
                    match c {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'0' => out.push(0),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'a' => out.push(7),
                        b'v' => out.push(11),
                        b'x' => {
                            let hex = self.s.get(self.i..self.i + 2).ok_or("unterminated \\x escape")?;
                            let v = std::str::from_utf8(hex)
                                .ok()
                                .and_then(|h| u8::from_str_radix(h, 16).ok())
                                .ok_or("bad \\x escape")?;
                            out.push(v);
                            self.i += 2;
                        }
                        other => out.push(other),
                    }
                }
                Some(b'\'') => {
                    self.i += 1;
                    break;
                }
                Some(c) => {
                    out.push(*c);
                    self.i += 1;
                }
            }
        }
        std::string::String::from_utf8(out).map_err(|_| "string is not UTF-8".to_string())
    }
    /// A nested type, one level deeper.
    fn inner(&mut self) -> Result<ColumnType, std::string::String> {
        self.depth += 1;
        if self.depth > MAX_TYPE_DEPTH {
            return Err(format!("types nested more than {MAX_TYPE_DEPTH} levels deep are not supported"));
        }
        let t = self.ty();
        self.depth -= 1;
        t
    }
    fn ty(&mut self) -> Result<ColumnType, std::string::String> {
        use ColumnType::*;
        let name = self.ident()?.to_string();
        Ok(match name.as_str() {
            "UInt8" => UInt8,
            "UInt16" => UInt16,
            "UInt32" => UInt32,
            "UInt64" => UInt64,
            "UInt128" => UInt128,
            "UInt256" => UInt256,
            "Int8" => Int8,
            "Int16" => Int16,
            "Int32" => Int32,
            "Int64" => Int64,
            "Int128" => Int128,
            "Int256" => Int256,
            "Float32" => Float32,
            "Float64" => Float64,
            "Bool" => Bool,
            "String" => String,
            "Date" => Date,
            "Date32" => Date32,
            "UUID" => Uuid,
            "IPv4" => IPv4,
            "IPv6" => IPv6,
            "JSON" => {
                if self.peek() == Some(b'(') {
                    return Err("JSON with parameters is not supported; declare plain `JSON`".into());
                }
                Json
            }
            "DateTime" => {
                if self.peek() == Some(b'(') {
                    self.eat(b'(')?;
                    let tz = TimeZone::parse(&self.quoted()?)?;
                    self.eat(b')')?;
                    DateTime(Some(tz))
                } else {
                    DateTime(None)
                }
            }
            "DateTime64" => {
                self.eat(b'(')?;
                let precision = self.int()?;
                if !(0..=9).contains(&precision) {
                    return Err(format!("DateTime64 precision {precision} out of range (0..=9)"));
                }
                let tz = if self.peek() == Some(b',') {
                    self.eat(b',')?;
                    Some(TimeZone::parse(&self.quoted()?)?)
                } else {
                    None
                };
                self.eat(b')')?;
                DateTime64 { precision: precision as u32, tz }
            }
            "FixedString" => {
                self.eat(b'(')?;
                let n = self.int()?;
                self.eat(b')')?;
                if !(1..=1_048_576).contains(&n) {
                    return Err(format!("FixedString length {n} out of range"));
                }
                FixedString(n as usize)
            }
            "Decimal" | "Decimal32" | "Decimal64" | "Decimal128" => {
                self.eat(b'(')?;
                let (precision, scale) = if name == "Decimal" {
                    let p = self.int()?;
                    self.eat(b',')?;
                    (p, self.int()?)
                } else {
                    let p = match name.as_str() {
                        "Decimal32" => 9,
                        "Decimal64" => 18,
                        _ => 38,
                    };
                    (p, self.int()?)
                };
                self.eat(b')')?;
                if !(1..=38).contains(&precision) || scale < 0 || scale > precision {
                    return Err(format!(
                        "Decimal({precision}, {scale}) out of range (precision 1..=38, scale 0..=precision)"
                    ));
                }
                Decimal { precision: precision as u32, scale: scale as u32 }
            }
            "Enum8" | "Enum16" => {
                self.eat(b'(')?;
                let mut items = Vec::new();
                loop {
                    let n = self.quoted()?;
                    self.eat(b'=')?;
                    let v = self.int()?;
                    let (lo, hi) = if name == "Enum8" { (-128, 127) } else { (-32768, 32767) };
                    if v < lo || v > hi {
                        return Err(format!("{name} value {v} out of range"));
                    }
                    items.push((n, v));
                    if self.peek() == Some(b',') {
                        self.i += 1;
                        continue;
                    }
                    break;
                }
                self.eat(b')')?;
                items.sort_by_key(|(_, v)| *v);
                for w in items.windows(2) {
                    if w[0].1 == w[1].1 {
                        return Err(format!("{name} repeats the value {}", w[0].1));
                    }
                }
                let mut names: Vec<&str> = items.iter().map(|(n, _)| n.as_str()).collect();
                names.sort_unstable();
                if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
                    return Err(format!("{name} repeats the name {}", quote(w[0])));
                }
                if name == "Enum8" { Enum8(items) } else { Enum16(items) }
            }
            "Nullable" | "Array" | "LowCardinality" => {
                self.eat(b'(')?;
                let inner = Box::new(self.inner()?);
                self.eat(b')')?;
                match name.as_str() {
                    "Nullable" => {
                        if matches!(*inner, Nullable(_) | Array(_) | LowCardinality(_) | Map(..) | Tuple(_) | Json) {
                            return Err(format!("Nullable({inner}) is not allowed"));
                        }
                        Nullable(inner)
                    }
                    "Array" => Array(inner),
                    _ => {
                        let base = match &*inner {
                            Nullable(t) => t,
                            t => t,
                        };
                        let ok = matches!(
                            base,
                            String
                                | FixedString(_)
                                | UInt8
                                | UInt16
                                | UInt32
                                | UInt64
                                | Int8
                                | Int16
                                | Int32
                                | Int64
                                | Float32
                                | Float64
                                | Date
                                | Date32
                                | DateTime(_)
                        );
                        if !ok {
                            return Err(format!(
                                "LowCardinality({inner}) is not supported; use it for strings, numbers and dates"
                            ));
                        }
                        LowCardinality(inner)
                    }
                }
            }
            "Map" => {
                self.eat(b'(')?;
                let k = self.inner()?;
                self.eat(b',')?;
                let v = self.inner()?;
                self.eat(b')')?;
                let key_base = match &k {
                    LowCardinality(t) => t,
                    t => t,
                };
                let key_ok = matches!(
                    key_base,
                    String
                        | FixedString(_)
                        | UInt8
                        | UInt16
                        | UInt32
                        | UInt64
                        | UInt128
                        | UInt256
                        | Int8
                        | Int16
                        | Int32
                        | Int64
                        | Int128
                        | Int256
                        | Bool
                        | Date
                        | Date32
                        | DateTime(_)
                        | Uuid
                        | IPv4
                        | IPv6
                        | Enum8(_)
                        | Enum16(_)
                );
                if !key_ok {
                    return Err(format!("Map key type {k} is not allowed (use a string, integer, date or enum)"));
                }
                Map(Box::new(k), Box::new(v))
            }
            "Tuple" => {
                self.eat(b'(')?;
                let mut items: Vec<(Option<std::string::String>, ColumnType)> = Vec::new();
                loop {
                    // `name Type` or `Type`: a name is an identifier followed by another one.
                    let save = self.i;
                    let first = self.ident()?.to_string();
                    self.ws();
                    let named = self.s.get(self.i).is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_');
                    self.i = save;
                    let name = if named {
                        self.ident()?;
                        super::check_identifier("tuple element name", &first)?;
                        Some(first)
                    } else {
                        None
                    };
                    items.push((name, self.inner()?));
                    if self.peek() == Some(b',') {
                        self.i += 1;
                        continue;
                    }
                    break;
                }
                self.eat(b')')?;
                let named = items.iter().filter(|(n, _)| n.is_some()).count();
                if named != 0 && named != items.len() {
                    return Err("a Tuple names all its elements or none".into());
                }
                if items.len() > 256 {
                    return Err("a Tuple of more than 256 elements is not supported".into());
                }
                Tuple(items)
            }
            other => return Err(format!("unsupported type `{other}`")),
        })
    }
}

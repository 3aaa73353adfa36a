//! Sizes on the command line: a bare integer is bytes; `512KiB`, `4MiB`, `1GiB` (or `K`, `M`,
//! `G`) are powers of 1024, `KB`, `MB`, `GB` powers of 1000. One error text for every flag.

/// Parses `4194304`, `4MiB`, `512K`, `1GB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let unit = unit.trim();
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => u64::MAX,
    };
    match digits.parse::<u64>() {
        Ok(n) if scale != u64::MAX => n
            .checked_mul(scale)
            .ok_or_else(|| format!("'{text}' is too large")),
        _ => Err(format!(
            "'{text}' is not a size: expected bytes, like 1048576, 512KiB, 4MiB or 1GiB"
        )),
    }
}

/// A clap `value_parser` for sizes of at least `min` bytes.
pub fn at_least(min: u64) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync {
    move |s: &str| {
        let n = parse_size(s)?;
        if n < min {
            return Err(format!("'{s}' is too small: at least {min} bytes"));
        }
        usize::try_from(n).map_err(|_| format!("'{s}' is too large"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(parse_size("4194304"), Ok(4 << 20));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("1 GB"), Ok(1_000_000_000));
        assert!(parse_size("4x")
            .unwrap_err()
            .contains("like 1048576, 512KiB"));
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999GiB")
            .unwrap_err()
            .contains("too large"));
        assert!(at_least(1024)("10").unwrap_err().contains("too small"));
    }
}

//! The plain CSV this crate writes and reads: a header line, comma-separated
//! fields, no quoting (fields never contain commas, quotes or newlines).

use anyhow::{bail, Context, Result};

/// A parsed file: the header and the rows, each as long as the header.
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn parse(text: &str) -> Result<Table> {
        let mut lines = text.lines().filter(|line| !line.trim().is_empty());
        let header: Vec<String> = lines
            .next()
            .context("empty CSV: no header line")?
            .split(',')
            .map(|field| field.trim().to_string())
            .collect();
        let mut rows = Vec::new();
        for (number, line) in lines.enumerate() {
            if line.contains('"') {
                bail!("line {}: quoted fields are not supported", number + 2);
            }
            let row: Vec<String> = line.split(',').map(|f| f.trim().to_string()).collect();
            if row.len() != header.len() {
                bail!(
                    "line {}: {} fields, the header has {}",
                    number + 2,
                    row.len(),
                    header.len()
                );
            }
            rows.push(row);
        }
        Ok(Table { header, rows })
    }

    pub fn read(path: &std::path::Path) -> Result<Table> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Table::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Index of the column named `name`.
    pub fn column(&self, name: &str) -> Result<usize> {
        self.header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("no column {name:?} (columns: {})", self.header.join(",")))
    }
}

/// Makes `text` safe as an unquoted field.
pub fn field(text: &str) -> String {
    text.replace([',', '\n', '"'], ";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_ragged_rows() {
        let table = Table::parse("a,b\n1,2\n\n3,4\n").unwrap();
        assert_eq!(table.rows, vec![vec!["1", "2"], vec!["3", "4"]]);
        assert_eq!(table.column("b").unwrap(), 1);
        assert!(table.column("c").is_err());
        assert!(Table::parse("a,b\n1\n").is_err());
        assert!(Table::parse("a,b\n\"1,2\",3\n").is_err());
        assert_eq!(field("x, \"y\"\nz"), "x; ;y;;z");
    }
}
